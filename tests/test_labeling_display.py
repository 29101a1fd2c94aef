"""How the labeling page draws a site's points and names its classes (fedal/data/info.py, the
site's own declarations in fedal/data/site.py, fedal/annotate/app.py): flattened images drawn as
images of the data set's shape, 1-D signals as plots, class names on the buttons. The browser
checks of the same are in tests/test_labeling_page.py."""

import io
import pickle
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from fedal.annotate import app as appmod
from fedal.annotate.annotators import mark_run
from fedal.config import DATASETS as RUN_DATASETS
from fedal.data.info import cifar100_names, dataset_info, site_display
from fedal.data.registry import dataset_names
from fedal.data.site import SiteDataError, load_site_data
from fedal.store import PoolStore, site_store_path

TOKEN = "a-token-of-enough-length-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client_for(site):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(appmod.create_app(site), base_url="http://127.0.0.1", headers=AUTH)


def page_for(tmp_path, data_path, *, dataset_note=None, queries=(0,), **args):
    """The page built as fedal-annotate builds it (build_site), on a store with open queries;
    ``dataset_note``: the dataset the site's ClientApp recorded (mark_run)."""
    d = load_site_data(data_path, "site-a")
    (tmp_path / "state").mkdir(exist_ok=True)
    with PoolStore(site_store_path(tmp_path / "state", "exp", "site-a"), "exp", "site-a", d.n_points,
                   d.fingerprint) as s:
        if dataset_note:
            mark_run(s, dataset=dataset_note, finished=False)
        s.set_budget(len(queries))
        s.add_queries(list(queries), 1, "margin", guesses=[1] * len(queries), confidences=[0.5] * len(queries))
    argv = ["--data-path", str(data_path), "--state-dir", str(tmp_path / "state"), "--experiment-id", "exp",
            "--client-id", "site-a", "--token", TOKEN]
    for k, v in args.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    site, _ = appmod.build_site(appmod.parse_args(argv))
    return site, client_for(site)


def buttons(html: str) -> list[str]:
    return re.findall(r'<button type="submit" name="label" value="\d+" id="class-\d+"[^>]*>([^<]*)', html)


def digits_npz(tmp_path, n=12):
    from sklearn.datasets import load_digits

    x = (load_digits().data[:n] / 16.0).astype("float32")  # as fedal's digits: 64 values per point
    np.savez(tmp_path / "digits.npz", x=x)
    return tmp_path / "digits.npz", x


def test_every_run_dataset_has_display_info_with_the_number_of_classes_it_trains():
    from fedal.image_meta import IMAGE_META

    assert set(dataset_names()) == set(RUN_DATASETS) == {"digits", "mnist1d", *IMAGE_META}
    counts = {"digits": 10, "mnist1d": 10, **{k: m.num_classes for k, m in IMAGE_META.items()}}
    for name in RUN_DATASETS:
        info = dataset_info(name)
        if info.class_names is not None:
            assert len(info.class_names) == counts[name] and len(set(info.class_names)) == counts[name]
    assert dataset_info("digits").shape == (8, 8) and dataset_info("digits").class_names[7] == "7"
    assert dataset_info("mnist1d").shape == (40,) and dataset_info("mnist1d").class_names == tuple("0123456789")
    assert dataset_info("fashion-mnist").class_names[9] == "Ankle boot"
    assert dataset_info("fashion-mnist").shape == (28, 28, 1)
    assert dataset_info("emnist-letters").class_names[0] == "a"  # labels 1..26 on disk, 0..25 in fedal
    assert dataset_info("cinic10").class_names == dataset_info("cifar10").class_names
    with pytest.raises(ValueError, match="dataset 'mnist' is not known; valid: mnist1d, digits"):
        dataset_info("mnist")


def test_cifar100_names_come_from_its_meta_file_and_a_pickle_that_builds_objects_is_refused(tmp_path):
    assert dataset_info("cifar100").class_names is None  # no files: the page shows numbers
    meta = tmp_path / "cifar-100-python" / "meta"
    meta.parent.mkdir()
    names = [f"name{k}" for k in range(100)]
    meta.write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": ["c"] * 20}))
    assert dataset_info("cifar100", tmp_path).class_names == tuple(names)

    class Evil:
        def __reduce__(self):  # unpickling calls _would_run: code chosen by whoever wrote the file
            return (_would_run, ("on the site's machine",))

    meta.write_bytes(pickle.dumps({"fine_label_names": Evil()}))
    with pytest.raises(ValueError, match="is not CIFAR-100's meta file.*refusing to load "
                                         "tests.test_labeling_display._would_run"):
        cifar100_names(tmp_path)
    assert RAN == []


RAN: list = []


def _would_run(where):
    RAN.append(where)


def test_a_digits_site_is_drawn_as_8x8_images_with_the_digits_on_the_buttons(tmp_path):
    path, x = digits_npz(tmp_path)
    site, c = page_for(tmp_path, path, dataset_note="digits", queries=(3,))
    assert (site.kind, site.display.shape, site.class_names) == ("image", (8, 8), list("0123456789"))
    html = c.get("/").text
    assert "<svg" not in html and 'id="point-image"' in html
    assert buttons(html) == [f"{d} " for d in "0123456789"]  # the name, then its key
    qid = int(re.search(r'data-query-id="(\d+)"', html).group(1))
    img = Image.open(io.BytesIO(c.get(f"/point/{qid}.png").content))
    assert img.size == (280, 280)  # 8x8, each pixel a 35x35 block
    # the pixels are the digit's, ink dark on white: block (r, c) is 255 - 255 * x[3][8r + c]
    small = np.asarray(img.convert("L"))[17::35, 17::35]
    assert np.array_equal(small, 255 - np.rint(255 * x[3].reshape(8, 8)).astype(np.uint8))
    site.store.close()


def test_the_dataset_may_be_given_and_must_agree_with_what_the_client_app_recorded(tmp_path):
    path, _ = digits_npz(tmp_path)
    site, _ = page_for(tmp_path, path, dataset="digits")  # nothing recorded yet: --dataset decides
    assert site.display.shape == (8, 8)
    site.store.close()
    with PoolStore(site_store_path(tmp_path / "state", "exp", "site-a"), "exp", "site-a", 12,
                   load_site_data(path).fingerprint) as s:
        mark_run(s, dataset="mnist1d", finished=False)
    with pytest.raises(appmod.StartupError, match="--dataset digits but the site's ClientApp runs dataset mnist1d"):
        page_for(tmp_path, path, dataset="digits")


def test_a_page_started_before_the_first_message_follows_the_dataset_once_recorded(tmp_path):
    path, _ = digits_npz(tmp_path)
    site, c = page_for(tmp_path, path, num_classes=10)  # no dataset yet: 64 values look like a signal
    assert site.kind == "signal" and "<svg" in c.get("/").text
    mark_run(site.store, dataset="digits", finished=False)  # the ClientApp's first message
    html = c.get("/").text
    assert site.kind == "image" and 'id="point-image"' in html and "<svg" not in html
    site.store.close()


def test_an_image_folder_site_names_its_buttons_after_its_folders(tmp_path):
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for name in ("benign", "malignant", "unclear"):
        (folder / name).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / name / f"{j}.png")
    site, c = page_for(tmp_path, folder, queries=(5,))
    html = c.get("/").text
    assert buttons(html) == ["benign ", "malignant ", "unclear "]
    assert "The model&rsquo;s guess: <b>malignant</b> (50% sure)" in html  # the guess by its name too
    img = Image.open(io.BytesIO(c.get(f"/point/{site.store.queries()[0].id}.png").content))
    assert img.size == (384, 288)  # 32x24 enlarged 12 times
    site.store.close()


def test_an_mnist1d_site_stays_a_plot_with_digit_buttons(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 40)).astype("float32")
    np.savez(tmp_path / "s.npz", x=x)
    site, c = page_for(tmp_path, tmp_path / "s.npz", dataset_note="mnist1d")
    html = c.get("/").text
    assert site.kind == "signal" and html.count("<polyline") == 1 and buttons(html)[:2] == ["0 ", "1 "]
    site.store.close()


def test_an_npz_site_may_declare_its_shape_and_names(tmp_path):
    x = np.random.default_rng(0).random((6, 12)).astype("float32")
    np.savez(tmp_path / "s.npz", x=x, shape=np.array([3, 4]), class_names=np.array(["left", "right"]))
    d = load_site_data(tmp_path / "s.npz")
    assert d.shape == (3, 4)
    # the site's shape and names win over the run's dataset's (digits: 8x8, "0".."9")
    site, c = page_for(tmp_path, tmp_path / "s.npz", dataset_note="digits")
    assert site.display.shape == (3, 4) and buttons(c.get("/").text) == ["left ", "right "]
    img = Image.open(io.BytesIO(c.get(f"/point/{site.store.queries()[0].id}.png").content))
    assert img.size == (4 * 94, 3 * 94)  # the shorter side at least 280 pixels
    site.store.close()
    # the declared shape changes no input: the same fingerprint as without it (the store stays valid)
    np.savez(tmp_path / "t.npz", x=x)
    assert load_site_data(tmp_path / "t.npz").fingerprint == d.fingerprint


@pytest.mark.parametrize("shape,needle", [
    (np.array([5, 5]), r"array 'shape' \[5, 5\] holds 25 values, but each point of 'x' holds 12"),
    (np.array([2, 2, 3, 1]), "must hold 1 to 3 positive integers"),
    (np.array([3.0, 4.0]), "must hold 1 to 3 positive integers"),
    (np.array([-3, -4]), "must hold 1 to 3 positive integers"),
])
def test_a_bad_declared_shape_is_refused_naming_it(tmp_path, shape, needle):
    np.savez(tmp_path / "s.npz", x=np.zeros((6, 12), "float32"), shape=shape)
    with pytest.raises(SiteDataError, match=needle):
        load_site_data(tmp_path / "s.npz")


def test_display_errors_name_what_disagrees():
    with pytest.raises(ValueError, match=r"each point holds 40 values \(40,\), but the data set's shape \(8, 8\)"):
        site_display((40,), info=dataset_info("digits"))
    with pytest.raises(ValueError, match="--num-classes 3 but the site's data names 10 classes"):
        site_display((64,), info=dataset_info("digits"), num_classes=3)
    with pytest.raises(ValueError, match="names no classes and holds no labels: give --num-classes"):
        site_display((64,))
    assert site_display((64,), labeled_classes=4).class_names == ("0", "1", "2", "3")
    assert site_display((28, 28, 1), info=dataset_info("fashion-mnist")).kind == "image"

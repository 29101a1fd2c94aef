"""Bring-your-own site data (fedal/data/site.py) from real .npz, PNG and JPEG files."""

import re

import numpy as np
import pytest
from PIL import Image

from fedal.data.site import SiteDataError, load_site_data


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def jpg(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def rgb(seed, h=6, w=5):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- .npz
def test_npz_with_labels(tmp_path):
    f = tmp_path / "site.npz"
    x = np.random.default_rng(0).normal(size=(12, 40)).astype(np.float64)
    y = np.arange(12) % 3
    np.savez(f, x=x, y=y, class_names=np.array(["cat", "dog", "eel"]))
    d = load_site_data(f)
    assert d.x.dtype == np.float32 and d.x.shape == (12, 40) and np.allclose(d.x, x, atol=1e-6)
    assert d.y.dtype == np.int64 and d.y.tolist() == y.tolist()
    assert d.class_names == ("cat", "dog", "eel") and d.num_classes == 3 and d.n_points == 12
    assert d.fingerprint.startswith("sha256:") and d.client_id.startswith("site-")
    assert d.files is None


def test_npz_uint8_images_without_labels(tmp_path):
    f = tmp_path / "site.npz"
    x = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(f, x=x)
    d = load_site_data(f)
    assert d.x.dtype == np.uint8 and np.array_equal(d.x, x)
    assert d.y is None and d.class_names is None and d.num_classes is None


def test_fingerprint_and_client_id_are_stable_and_track_the_inputs(tmp_path):
    x = np.random.default_rng(2).normal(size=(10, 3)).astype(np.float32)
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    np.savez(a, x=x, y=np.zeros(10, int))
    np.savez(b, x=x, y=np.ones(10, int))  # the same inputs with other answers
    np.savez(c, x=x[::-1], y=np.zeros(10, int))  # the same inputs in another order
    da, db, dc = load_site_data(a), load_site_data(b), load_site_data(c)
    assert load_site_data(a).fingerprint == da.fingerprint  # deterministic
    assert db.fingerprint == da.fingerprint  # labels are answers, not identity
    assert dc.fingerprint != da.fingerprint  # point i would mean another input
    assert da.client_id == load_site_data(a).client_id and da.client_id != db.client_id  # path differs
    assert load_site_data(a, client_id="hospital-7").client_id == "hospital-7"


@pytest.mark.parametrize("arrays,needle", [
    ({"y": np.zeros(3, int)}, "has no array 'x'"),
    ({"x": np.zeros((3, 2)), "labels": np.zeros(3, int)}, r"unexpected arrays \['labels'\]; valid names: x, y, class_names"),
    ({"x": np.zeros(5)}, r"array 'x' has shape \(5,\); expected \(N, \.\.\.\)"),
    ({"x": np.zeros((0, 4))}, "N >= 1"),
    ({"x": np.zeros((3, 2), dtype=np.int64)}, "array 'x' has dtype int64; valid dtypes: float16/32/64 or uint8"),
    ({"x": np.array([[0.0, 1.0], [np.nan, 1.0], [np.inf, 0.0]])},
     r"array 'x' has NaN or infinite values in 2 points \(first: point 1\)"),
    ({"x": np.zeros((3, 2)), "y": np.array([0.0, 1.0, 1.0])}, "array 'y' has dtype float64; valid dtypes: integer"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, r"array 'y' has shape \(2,\) but 'x' has 3 points"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 1])}, r"negative class id -1 \(point 1\)"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, 2, 1]), "class_names": np.array(["a", "b"])},
     "class id 2 but 'class_names' names only 2 classes"),
])
def test_bad_npz_arrays_are_named(tmp_path, arrays, needle):
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(SiteDataError, match=needle) as e:
        load_site_data(f)
    assert str(f) in str(e.value)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    f = tmp_path / "obj.npz"
    np.savez(f, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(SiteDataError, match="is not a readable .npz file"):
        load_site_data(f)


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(SiteDataError, match="does not exist"):
        load_site_data(tmp_path / "nowhere.npz")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(SiteDataError, match=r"neither an \.npz file nor a folder; valid forms"):
        load_site_data(tmp_path / "data.csv")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(SiteDataError, match="broken.npz is not a readable .npz file"):
        load_site_data(tmp_path / "broken.npz")
    with pytest.raises(SiteDataError, match="client-id 'a b/c' is not valid"):
        np.savez(tmp_path / "ok.npz", x=np.zeros((2, 2)))
        load_site_data(tmp_path / "ok.npz", client_id="a b/c")


# ---------------------------------------------------------------------------------- image folders
def test_class_folders_png_and_jpeg(tmp_path):
    root = tmp_path / "images"
    imgs = {("dog", "b.png"): rgb(1), ("dog", "a.png"): rgb(2), ("cat", "z.png"): rgb(3)}
    for (cls, name), arr in imgs.items():
        png(root / cls / name, arr)
    jpg(root / "cat" / "y.jpg", rgb(4))
    (root / "cat" / "notes.txt").write_text("ignored")
    d = load_site_data(root)
    assert d.class_names == ("cat", "dog")
    assert d.files == ("cat/y.jpg", "cat/z.png", "dog/a.png", "dog/b.png")  # sorted, not listing order
    assert d.y.tolist() == [0, 0, 1, 1]
    assert d.x.dtype == np.uint8 and d.x.shape == (4, 6, 5, 3)
    assert np.array_equal(d.x[1], imgs[("cat", "z.png")]) and np.array_equal(d.x[3], imgs[("dog", "b.png")])
    assert np.array_equal(d.x[0], np.asarray(Image.open(root / "cat" / "y.jpg").convert("RGB")))  # lossy JPEG
    assert load_site_data(root).fingerprint == d.fingerprint
    png(root / "dog" / "b.png", rgb(5))  # another image under the same name
    assert load_site_data(root).fingerprint != d.fingerprint


def test_grayscale_images_give_one_channel_and_mixed_modes_give_rgb(tmp_path):
    g = np.arange(30, dtype=np.uint8).reshape(6, 5)
    png(tmp_path / "gray" / "0.png", g)
    png(tmp_path / "gray" / "1.png", g[::-1].copy())
    d = load_site_data(tmp_path / "gray")
    assert d.x.shape == (2, 6, 5, 1) and np.array_equal(d.x[0, ..., 0], g)
    assert d.y is None and d.class_names is None
    png(tmp_path / "mixed" / "0.png", g)
    Image.fromarray(np.dstack([rgb(1), np.full((6, 5), 128, np.uint8)])).save(tmp_path / "mixed" / "1.png")
    m = load_site_data(tmp_path / "mixed")
    assert m.x.shape == (2, 6, 5, 3) and np.array_equal(m.x[0, ..., 1], g)
    assert np.array_equal(m.x[1], rgb(1))  # alpha dropped


def test_flat_folder_with_labels_csv_as_the_oracle(tmp_path):
    root = tmp_path / "flat"
    for k in range(3):
        png(root / f"img{k}.png", rgb(k))
    (root / "labels.csv").write_text("file,label\nimg2.png,tumour\nimg0.png,healthy\n\nimg1.png,tumour\n")
    d = load_site_data(root)
    assert d.files == ("img0.png", "img1.png", "img2.png")
    assert d.class_names == ("healthy", "tumour") and d.y.tolist() == [0, 1, 1]
    (root / "labels.csv").write_text("file,label\nimg0.png,2\nimg1.png,0\nimg2.png,1\n")
    d2 = load_site_data(root)
    assert d2.y.tolist() == [2, 0, 1] and d2.class_names is None
    assert d2.fingerprint == d.fingerprint  # answers changed, inputs did not


@pytest.mark.parametrize("csv_text,needle", [
    ("name,class\nimg0.png,1\n", "must start with the header 'file,label'"),
    ("file,label\nimg0.png,1\nimg1.png,1\n", r"no label for 1 images \(first: img2.png\)"),
    ("file,label\nimg0.png,1\nimg1.png,1\nimg2.png,0\nimg9.png,1\n", r"lists 1 files that are not images .*first: img9.png"),
    ("file,label\nimg0.png,1\nimg0.png,2\n", "line 3: img0.png is listed twice"),
    ("file,label\nimg0.png\n", "line 2: expected 'file,label'"),
])
def test_bad_labels_csv_is_named(tmp_path, csv_text, needle):
    root = tmp_path / "flat"
    for k in range(3):
        png(root / f"img{k}.png", rgb(k))
    (root / "labels.csv").write_text(csv_text)
    with pytest.raises(SiteDataError, match=needle) as e:
        load_site_data(root)
    assert str(root / "labels.csv") in str(e.value)


def test_images_of_another_size_are_named(tmp_path):
    png(tmp_path / "s" / "a" / "1.png", rgb(1))
    png(tmp_path / "s" / "b" / "2.png", rgb(2, h=7))
    with pytest.raises(SiteDataError, match=r"b/2.png is 5x7 but .*a/1.png is 5x6; all images of a site must share one size"):
        load_site_data(tmp_path / "s")


@pytest.mark.parametrize("make,needle", [
    (lambda r: (png(r / "a.png", rgb(1)), png(r / "cls" / "b.png", rgb(2))), "mixes images .* and class folders"),
    (lambda r: (r / "empty").mkdir(parents=True), r"class folder .*empty holds no .png/.jpg/.jpeg images"),
    (lambda r: r.mkdir(), "holds no .png/.jpg/.jpeg images and no class folders"),
    (lambda r: (png(r / "cls" / "deeper" / "b.png", rgb(2)), png(r / "cls" / "c.png", rgb(2))),
     r"class folder .*cls holds a folder \(deeper/\); a class folder holds images only$"),
    (lambda r: (png(r / "cls" / "b.png", rgb(2)), (r / "labels.csv").write_text("file,label\n")),
     "has class folders and a labels.csv"),
    (lambda r: (png(r / "a.png", rgb(1)), (r / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")),
     r"image .*b.png cannot be (read|decoded)"),
    (lambda r: (r.mkdir(), Image.fromarray(np.zeros((4, 4), np.uint16)).save(r / "deep.png")),
     "has I;16 pixels|has I pixels"),
])
def test_bad_image_folders_are_named(tmp_path, make, needle):
    root = tmp_path / "site"
    make(root)
    with pytest.raises(SiteDataError, match=needle):
        load_site_data(root)


def test_the_check_command(tmp_path, capsys):
    from fedal.data.site import main

    png(tmp_path / "site" / "a" / "0.png", rgb(0))
    png(tmp_path / "site" / "b" / "1.png", rgb(1))
    assert main([str(tmp_path / "site"), "--client-id", "clinic-3"]) == 0
    out = capsys.readouterr().out
    assert "points:      2, inputs uint8 (6, 5, 3)" in out and "2 oracle answers, 2 classes" in out
    assert "client id:   clinic-3" in out and "fingerprint: sha256:" in out
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- the run's dataset
def _site(tmp_path, y, **arrays):
    f = tmp_path / "site.npz"
    np.savez(f, x=np.zeros((len(y), 64), dtype=np.float32), y=np.asarray(y), **arrays)
    return load_site_data(f)


def test_class_ids_must_stay_below_the_datasets_number_of_classes(tmp_path):
    from fedal.data.site import check_site_matches

    # digits has 10 classes, ids 0..9: the last valid id passes, the first one past it (10) does not
    assert check_site_matches(_site(tmp_path, [0, 9, 3]), "digits") == 10
    with pytest.raises(SiteDataError, match=r"site.npz: the labels use class id 10 \(point 1\), but dataset = "
                                            r"'digits' has 10 classes \(ids 0\.\.9\)"):
        check_site_matches(_site(tmp_path, [0, 10, 3]), "digits")
    # and a site naming as many classes as the dataset passes, one more or fewer does not
    names = np.array([f"c{i}" for i in range(10)])
    assert check_site_matches(_site(tmp_path, [0, 9], class_names=names), "digits") == 10
    for wrong in (names[:9], np.append(names, "c10")):
        with pytest.raises(SiteDataError, match=rf"the site names {len(wrong)} classes \(c0, c1, c2, c3, c4, "
                                                rf"\.\.\.\), but dataset = 'digits' has 10"):
            check_site_matches(_site(tmp_path, [0], class_names=wrong), "digits")


# ---------------------------------------------------------------------------------- what make mutate found
# (reports/mutation/README.md): the check command's whole output, hidden entries, pixel modes,
# labels.csv's edge rows and the folder fingerprint's definition
def test_the_check_command_prints_what_fedal_will_see(tmp_path, capsys):
    from fedal.data.site import main

    f = tmp_path / "site.npz"
    np.savez(f, x=np.zeros((3, 40), np.float32), y=np.array([0, 1, 1]), class_names=np.array(["no", "yes"]))
    assert main([str(f), "--client-id", "clinic-3"]) == 0
    d = load_site_data(f, "clinic-3")
    assert capsys.readouterr().out == (f"data:        {f}\npoints:      3, inputs float32 (40,)\n"
                                       f"labels:      3 oracle answers, 2 classes\nclasses:     no, yes\n"
                                       f"fingerprint: {d.fingerprint}\nclient id:   clinic-3\n")
    np.savez(f, x=np.zeros((2, 40), np.float32))
    assert main([str(f)]) == 0
    out = capsys.readouterr().out
    assert "labels:      none (labels are asked for on request)\nclasses:     -\n" in out
    assert f"client id:   {load_site_data(f).client_id}\n" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith(
        "usage: python -m fedal.data.site [-h] [--client-id CLIENT_ID]\n"
        "                                 [--dataset {mnist1d,digits,cifar10,cifar100,fashion-mnist,emnist-letters,"
        "cinic10}]\n                                 data_path\n\n"
        "Check a site's data and print what fedal will see; with --dataset, also that\n")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--client-id CLIENT_ID\n                        the id this site will be configured with" in \
        capsys.readouterr().out


def test_hidden_files_and_folders_are_not_the_sites_data(tmp_path):
    root = tmp_path / "site"
    png(root / "a" / "0.png", rgb(0))
    png(root / "a" / ".1.png", rgb(1))  # e.g. a viewer's thumbnail
    (root / "a" / ".cache").mkdir()
    (root / ".git").mkdir()
    png(root / ".git" / "x.png", rgb(2))
    d = load_site_data(root)
    assert d.class_names == ("a",) and d.files == ("a/0.png",)
    flat = tmp_path / "flat"
    png(flat / "0.png", rgb(0))
    png(flat / ".0.png", rgb(1))
    (flat / ".thumbs").mkdir()
    assert load_site_data(flat).files == ("0.png",)


@pytest.mark.parametrize("mode", ["I", "I;16", "I;16B", "I;16L", "F"])
def test_16_bit_and_float_images_are_refused(tmp_path, monkeypatch, mode):
    from PIL import Image as PILImage

    png(tmp_path / "s" / "0.png", rgb(0))
    monkeypatch.setattr(PILImage, "open", lambda p, *a, **k: PILImage.new(mode, (5, 6)))
    with pytest.raises(SiteDataError, match=rf"image .*0.png has {re.escape(mode)} pixels \(16-bit or float\); "
                                            r"fedal reads 8-bit grayscale or colour images: convert it to 8 bits$"):
        load_site_data(tmp_path / "s")


def test_one_bit_images_are_grayscale(tmp_path):
    Image.fromarray(np.eye(6, 5, dtype=bool)).save(tmp_path / "bw.png")
    d = load_site_data(tmp_path)
    assert d.x.shape == (1, 6, 5, 1) and d.x[0, 0, 0, 0] == 255 and d.x[0, 0, 1, 0] == 0


def test_an_image_damaged_past_its_header_is_named(tmp_path):
    png(tmp_path / "s" / "0.png", rgb(0, h=40, w=40))
    raw = (tmp_path / "s" / "0.png").read_bytes()
    (tmp_path / "s" / "0.png").write_bytes(raw[: len(raw) // 2])  # the header reads, the pixels do not
    with pytest.raises(SiteDataError, match=r"image .*0.png cannot be decoded \(.*truncated.*\)$"):
        load_site_data(tmp_path / "s")


def test_the_folder_fingerprint_hashes_names_sizes_and_bytes_in_order(tmp_path):
    import hashlib

    root = tmp_path / "s"
    png(root / "b" / "1.png", rgb(1))
    png(root / "a" / "0.png", rgb(0))
    h = hashlib.sha256(b"fedal-site-images-v1\n")
    for name in ("a/0.png", "b/1.png"):
        data = (root / name).read_bytes()
        h.update(f"{name}\n{len(data)}\n".encode() + data)
    assert load_site_data(root).fingerprint == "sha256:" + h.hexdigest()[:32]


@pytest.mark.parametrize("csv_text,needle", [
    ("", r"must start with the header 'file,label'; found nothing$"),
    ("name,class\n", r"must start with the header 'file,label'; found \['name', 'class'\]$"),
    ("file,label\nimg0.png,1\nimg1.png,\n", r"line 3: expected 'file,label', got \['img1.png', ''\]$"),
    ("file,label\nimg0.png,1\n,0\n", r"line 3: expected 'file,label', got \['', '0'\]$"),
    ("file,label\nimg0.png,1\n", r"has no label for 2 images \(first: img1.png\); give every image a label, or "
                                 r"remove the file to treat the folder as unlabeled$"),
])
def test_labels_csv_rows_are_checked_one_by_one(tmp_path, csv_text, needle):
    root = tmp_path / "flat"
    for k in range(3):
        png(root / f"img{k}.png", rgb(k))
    (root / "labels.csv").write_text(csv_text)
    with pytest.raises(SiteDataError, match=needle):
        load_site_data(root)


def test_blank_rows_of_labels_csv_are_skipped_and_an_unreadable_file_is_named(tmp_path):
    root = tmp_path / "flat"
    for k in range(2):
        png(root / f"img{k}.png", rgb(k))
    (root / "labels.csv").write_text("file,label\nimg0.png,1\n  ,  \n\nimg1.png,0\n")
    assert load_site_data(root).y.tolist() == [1, 0]
    (root / "labels.csv").write_bytes(b"file,label\nimg0.png,\xff\xfe\n")
    with pytest.raises(SiteDataError, match=r"labels.csv cannot be read \('utf-8' codec can't decode"):
        load_site_data(root)


@pytest.mark.parametrize("dataset,x,needle", [
    ("digits", np.zeros((2, 40), np.float32),
     r"the site's points are float32 of shape \(40,\), but the run's dataset = 'digits' expects float32 points of "
     r"shape \(64,\), feature vectors scaled as the data set's own: digits pixel/16, mnist1d as generated; convert "
     r"the data or run with the dataset that matches it$"),
    ("cifar10", np.zeros((2, 32, 32, 3), np.float32),  # the right shape, the wrong kind
     r"the site's points are float32 of shape \(32, 32, 3\), but the run's dataset = 'cifar10' expects uint8 points "
     r"of shape \(32, 32, 3\), 8-bit images, \(H, W, C\) per point; convert the data or run with the dataset"),
    ("mnist1d", np.zeros((2, 40), np.uint8),
     r"are uint8 of shape \(40,\), but the run's dataset = 'mnist1d' expects float32 points of shape \(40,\)"),
])
def test_points_of_another_shape_or_kind_are_refused_with_what_the_dataset_expects(tmp_path, dataset, x, needle):
    from fedal.data.site import check_site_matches

    np.savez(tmp_path / "site.npz", x=x)
    with pytest.raises(SiteDataError, match=needle):
        check_site_matches(load_site_data(tmp_path / "site.npz"), dataset)


def test_what_each_dataset_expects_of_a_site():
    from fedal.data.site import expected_inputs

    assert expected_inputs("mnist1d") == ((40,), "float", 10) and expected_inputs("digits") == ((64,), "float", 10)
    assert expected_inputs("cifar10") == ((32, 32, 3), "uint8", 10)
    assert expected_inputs("cifar100")[2] == 100


@pytest.mark.parametrize("n,shown", [(3, "c0, c1, c2"), (5, "c0, c1, c2, c3, c4"), (6, "c0, c1, c2, c3, c4, ...")])
def test_a_wrong_number_of_class_names_lists_the_first_five(tmp_path, n, shown):
    from fedal.data.site import check_site_matches

    site = _site(tmp_path, [0], class_names=np.array([f"c{i}" for i in range(n)]))
    with pytest.raises(SiteDataError, match=rf"the site names {n} classes \({re.escape(shown)}\), but dataset = "
                                            r"'digits' has 10$"):
        check_site_matches(site, "digits")


def test_client_ids_are_checked_and_kept_as_given(tmp_path):
    from fedal.data.site import check_client_id

    assert check_client_id("clinic-3.b_2") == "clinic-3.b_2"
    for bad in ("a b", "-lead", "", "x" * 65):
        with pytest.raises(SiteDataError, match=rf"^client-id {re.escape(repr(bad))} is not valid: use 1-64 letters, "
                                                r"digits, '\.', '_' or '-', starting with a letter or digit$"):
            check_client_id(bad)
    np.savez(tmp_path / "s.npz", x=np.zeros((2, 3)))
    assert load_site_data(tmp_path / "s.npz", client_id="site-7").client_id == "site-7"


@pytest.mark.parametrize("arrays,needle", [
    (dict(x=np.zeros((2, 3)), class_names=np.array([["a", "b"]])), r"must be a non-empty 1-D array of strings; "
                                                                    r"got dtype <U1, shape \(1, 2\)$"),
    (dict(x=np.zeros((2, 3)), class_names=np.array([1, 2])), r"got dtype int64, shape \(2,\)$"),
    (dict(x=np.zeros((2, 3)), class_names=np.array([], dtype=str)), r"got dtype <U1, shape \(0,\)$"),
    (dict(x=np.zeros((2, 3)), class_names=np.array(["a", "b", "a"])), r"array 'class_names' repeats a name: "
                                                                      r"\['a', 'b', 'a'\]$"),
    (dict(x=np.full((2, 3), 1e39)), r"array 'x' has values too large for float32$"),
    (dict(x=np.zeros((2, 3)), z=np.zeros(2)), r"holds unexpected arrays \['z'\]; valid names: x, y, class_names, "
                                               r"shape \(x required\)$"),
    (dict(x=np.zeros(4)), r"array 'x' has shape \(4,\); expected \(N, \.\.\.\) with N >= 1 points and at least one "
                          r"feature dimension$"),
])
def test_bad_npz_arrays_are_named_with_what_is_expected(tmp_path, arrays, needle):
    np.savez(tmp_path / "s.npz", **arrays)
    with pytest.raises(SiteDataError, match=needle):
        load_site_data(tmp_path / "s.npz")


def test_a_single_class_name_is_enough_and_an_unreadable_npz_says_how_to_write_one(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.zeros((2, 3)), y=np.array([0, 0]), class_names=np.array(["only"]))
    assert load_site_data(tmp_path / "s.npz").class_names == ("only",)
    (tmp_path / "s.npz").write_bytes(b"not a zip")
    with pytest.raises(SiteDataError, match=r"s.npz is not a readable .npz file \(.*\); write it with "
                                            r"numpy.savez\(path, x=\.\.\., y=\.\.\.\)$"):
        load_site_data(tmp_path / "s.npz")


def test_the_npz_fingerprint_hashes_the_inputs_dtype_shape_and_bytes(tmp_path):
    import hashlib

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "s.npz", x=x, y=np.array([0, 1, 0]))
    h = hashlib.sha256(b"fedal-site-npz-v1\n")
    h.update(f"{x.dtype.str} {x.shape}\n".encode() + x.tobytes())
    assert load_site_data(tmp_path / "s.npz").fingerprint == "sha256:" + h.hexdigest()[:32]


def test_labels_csv_is_read_as_csv_with_quoted_commas_and_line_breaks(tmp_path):
    root = tmp_path / "flat"
    for k in range(2):
        png(root / f"img{k}.png", rgb(k))
    (root / "labels.csv").write_bytes(b'file,label\r\nimg0.png,"benign, small"\r\nimg1.png,"two\r\nlines"\r\n')
    assert load_site_data(root).class_names == ("benign, small", "two\r\nlines")


def test_an_image_dataset_takes_uint8_points_of_its_height_width_and_channels(tmp_path):
    from fedal import image_meta
    from fedal.data.site import check_site_matches, expected_inputs

    np.savez(tmp_path / "site.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([9, 0]))
    assert check_site_matches(load_site_data(tmp_path / "site.npz"), "cifar10") == 10
    # image_size is (height, width): a data set of 24x32 images takes points of shape (24, 32, C)
    # (its registry entry is made from its ImageMeta by fedal.data.builtin.image_dataset)
    from fedal.data.builtin import image_dataset
    from fedal.data.registry import register_dataset, unregister_dataset

    register_dataset(image_dataset("images-24x32", image_meta.ImageMeta(10, 3, (24, 32), (0.5,) * 3, (0.2,) * 3),
                                   lambda root: None))
    try:
        assert expected_inputs("images-24x32") == ((24, 32, 3), "uint8", 10)
    finally:
        unregister_dataset("images-24x32")


def test_the_derived_client_id_and_the_paths_fedal_cannot_read(tmp_path):
    import hashlib

    np.savez(tmp_path / "s.npz", x=np.zeros((2, 3)))
    d = load_site_data(tmp_path / "s.npz", client_id="")  # empty: derived, as for None
    digest = hashlib.sha256(f"{(tmp_path / 's.npz').resolve()}\n{d.fingerprint}".encode()).hexdigest()
    assert d.client_id == f"site-{digest[:12]}" == load_site_data(tmp_path / "s.npz").client_id
    with pytest.raises(SiteDataError, match=r"^client-id 'a b' is not valid: use 1-64 letters, digits, '\.', '_' or "
                                            r"'-', starting with a letter or digit$"):
        load_site_data(tmp_path / "s.npz", client_id="a b")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SiteDataError, match=r"notes.txt is neither an .npz file nor a folder; valid forms: "
                                            r"<file>.npz with x \(and y\), <folder>/<class>/\*.png\|jpg, "
                                            r"<folder>/\*.png\|jpg \(with an optional labels.csv\)$"):
        load_site_data(tmp_path / "notes.txt")

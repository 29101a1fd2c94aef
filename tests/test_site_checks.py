"""The site-data checks that make mutate found unguarded (reports/mutation/, issue #22): the
.npz's declared 'shape' (how one point is drawn for a person), what a site without one carries
to its labeling page, and the check command's --dataset "fits:" line and help
(fedal/data/site.py). Everything runs in-process, on tiny arrays."""

import re

import numpy as np
import pytest
from PIL import Image

from fedal.data.info import dataset_info, site_display
from fedal.data.site import SiteDataError, load_site_data, main


def npz(tmp_path, **arrays):
    f = tmp_path / "site.npz"
    np.savez(f, **arrays)
    return f


# ---------------------------------------------------------------------------------- a declared shape
@pytest.mark.parametrize("x_shape,declared", [
    ((6, 12), [3, 4]),        # a flattened image
    ((6, 12), [12]),          # one value per point drawn as a signal: a single entry is enough
    ((6, 12), [2, 2, 3]),     # three entries is the most
    ((6, 12), [2, 6, 1]),     # a 1 (one channel) is a positive size
    ((6, 3, 4), [1, 12]),     # x need not be flat: only the number of values per point must agree
])
def test_a_declared_shape_of_1_to_3_positive_integers_is_kept(tmp_path, x_shape, declared):
    x = np.arange(np.prod(x_shape), dtype=np.float32).reshape(x_shape)
    d = load_site_data(npz(tmp_path, x=x, shape=np.array(declared, dtype=np.int64)))
    assert d.shape == tuple(declared) and all(type(v) is int for v in d.shape)
    assert d.x.shape == x_shape  # the declaration changes no input


@pytest.mark.parametrize("declared", [
    np.array([2, 2, 3, 1]),       # 4 entries, though they hold the 12 values
    np.array([3.0, 4.0]),         # not integers
    np.array([-3, -4]),           # not positive, though the product is 12
    np.array([12, 1, 0]),         # a zero
    np.array([[3, 4]]),           # not 1-D
    np.array([[12]]),             # not 1-D, even with one entry
    np.array([], dtype=np.int64),  # no entry
])
def test_a_declared_shape_that_is_not_1_to_3_positive_integers_is_refused_naming_it(tmp_path, declared):
    f = npz(tmp_path, x=np.zeros((6, 12), np.float32), shape=declared)
    with pytest.raises(SiteDataError) as e:
        load_site_data(f)
    assert str(e.value) == (f"{f}: array 'shape' must hold 1 to 3 positive integers (how one point is drawn, "
                            f"e.g. [8, 8]); got {declared.tolist()} ({declared.dtype})")


def test_a_declared_shape_holding_another_number_of_values_is_refused_naming_both(tmp_path):
    f = npz(tmp_path, x=np.zeros((6, 3, 4), np.float32), shape=np.array([5, 5]))
    with pytest.raises(SiteDataError) as e:
        load_site_data(f)
    assert str(e.value) == f"{f}: array 'shape' [5, 5] holds 25 values, but each point of 'x' holds 12 (3, 4)"


def test_without_a_declared_shape_the_labeling_page_draws_the_datasets_or_the_stored_shape(tmp_path):
    # no 'shape' in the .npz: nothing is declared (None, not an empty shape), so a digits site's
    # 64 values are drawn as the data set's 8x8 images
    d = load_site_data(npz(tmp_path, x=np.zeros((2, 64), np.float32)))
    assert d.shape is None
    assert site_display(d.x.shape[1:], site_shape=d.shape, info=dataset_info("digits")).shape == (8, 8)
    # an image folder declares nothing either: its images are drawn at their own size
    root = tmp_path / "folder"
    root.mkdir()
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(root / "0.png")
    f = load_site_data(root)
    assert f.shape is None
    shown = site_display(f.x.shape[1:], site_shape=f.shape, num_classes=2)
    assert (shown.kind, shown.shape) == ("image", (6, 5, 3))


# ---------------------------------------------------------------------------------- the check command
@pytest.mark.parametrize("dataset,x,fits", [
    ("digits", np.zeros((3, 64), np.float32), "fits:        dataset 'digits' (float32 (64,), 10 classes)"),
    ("cifar100", np.zeros((3, 32, 32, 3), np.uint8),
     "fits:        dataset 'cifar100' (uint8 (32, 32, 3), 100 classes)"),
])
def test_the_check_command_says_which_dataset_the_site_fits(tmp_path, capsys, dataset, x, fits):
    f = npz(tmp_path, x=x, y=np.array([0, 1, 2]))
    assert main([str(f), "--client-id", "clinic-3", "--dataset", dataset]) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"\nclient id:   clinic-3\n{fits}\n")
    # without --dataset there is no fits line; a site that does not fit is refused, naming why
    assert main([str(f), "--client-id", "clinic-3"]) == 0
    assert capsys.readouterr().out.endswith("\nclient id:   clinic-3\n")
    other = "cifar10" if dataset == "digits" else "digits"
    assert main([str(f), "--dataset", other]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f}: the site's points are ") and f"dataset = {other!r} expects" in err


def test_the_check_commands_help_names_the_path_and_what_each_option_means(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    for phrase in ("Check a site's data and print what fedal will see",
                   "also that it fits the run's dataset (input shape, dtype, classes), "
                   "as the ClientApp checks on the run's first message.",
                   "data_path an .npz file or an image folder",
                   "--client-id CLIENT_ID the id this site will be configured with",
                   "the run's dataset, which fixes the model: refuse data of another input shape, dtype or "
                   "class range"):
        assert phrase in text, phrase
    assert re.search(r"--dataset \{[^}]*digits[^}]*\} the run's dataset", text)

"""Offline images: samples, files of any mode, bad and huge files."""
import numpy as np
import pytest
from PIL import Image

from evmamba.analysis import images
from evmamba.analysis.images import fit_image, load_image, sample_names


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1", "I;16"])
def test_files_of_any_mode_load_as_rgb(tmp_path, mode):
    path = tmp_path / "x.png"
    Image.fromarray(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)).convert(mode).save(path)
    a = load_image(path)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8


def test_bad_sources_say_what_to_give(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.png as an image.*give a PNG, JPEG"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="sample names are astronaut, chelsea"):
        load_image("no-such-picture")
    assert "chelsea" in sample_names()


def test_huge_images_are_downscaled_with_a_note(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((3000, 5000, 3), 7, np.uint8)).save(path)
    picture, note = fit_image(path)
    assert picture.shape == (1229, 2048, 3) and (picture == 7).all()
    assert note == "the image was 5000x3000 pixels and has been downscaled to 2048x1229"
    small, none = fit_image("chelsea")
    assert none is None and small.shape == load_image("chelsea").shape


def test_too_many_pixels_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="40x40 pixels, more than this tool reads.*downscale it first"):
        load_image(path)

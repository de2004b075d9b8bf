"""Turning PIL images, files, numpy arrays and tensors into interface tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmreward import InputError, ItemReadError
from mmreward.analytic import Colorfulness
from mmreward.io import (
    group_by_shape,
    load_image,
    numpy_to_tensor,
    pil_to_tensor,
    to_image_tensor,
    to_video_tensor,
)


# --------------------------------------------------------------------------------------
# PIL modes
# --------------------------------------------------------------------------------------
def test_pil_rgb(sample_arrays):
    arr = sample_arrays["astronaut"]
    x = pil_to_tensor(Image.fromarray(arr))
    assert x.shape == (3, *arr.shape[:2]) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_pil_grayscale_is_replicated(sample_pils, sample_arrays):
    im = sample_pils["camera"]
    assert im.mode == "L"
    x = pil_to_tensor(im)
    assert x.shape == (3, *sample_arrays["camera"].shape)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    torch.testing.assert_close(x[0], torch.from_numpy(sample_arrays["camera"]).float() / 255)


def test_pil_rgba_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black → white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black → mid grey
    rgba[1, 1] = (10, 20, 30, 0)  # transparent colour → white
    x = pil_to_tensor(Image.fromarray(rgba, mode="RGBA"))
    torch.testing.assert_close(x[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(x[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(x[:, 1, 0], torch.full((3,), 127 / 255), atol=2 / 255, rtol=0)
    torch.testing.assert_close(x[:, 1, 1], torch.ones(3))


def test_pil_la_is_composited_on_white():
    la = Image.fromarray(np.zeros((2, 2, 2), np.uint8), mode="LA")
    torch.testing.assert_close(pil_to_tensor(la), torch.ones(3, 2, 2))


def test_pil_palette(sample_pils):
    rgb = sample_pils["astronaut"]
    p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert p.mode == "P"
    torch.testing.assert_close(pil_to_tensor(p), pil_to_tensor(p.convert("RGB")))


def test_pil_palette_transparency_is_white():
    p = Image.new("P", (2, 1), 0)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0  # palette index 0 (black) is transparent
    x = pil_to_tensor(p)
    torch.testing.assert_close(x[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(x[:, 0, 1], torch.tensor([0.0, 1.0, 0.0]))


def test_pil_16_bit(tmp_path):
    arr = np.array([[0, 65535], [32768, 255]], np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    x = pil_to_tensor(im)
    assert x.shape == (3, 2, 2) and torch.equal(x[0], x[2])
    torch.testing.assert_close(x[0], torch.from_numpy(arr.astype(np.float32) / 65535))
    assert x[0, 0, 1] == 1.0 and x[0, 0, 0] == 0.0
    # and through a 16-bit PNG file
    path = tmp_path / "g16.png"
    im.save(path)
    torch.testing.assert_close(load_image(path), x)


# --------------------------------------------------------------------------------------
# numpy arrays and tensors
# --------------------------------------------------------------------------------------
def test_numpy_uint8_hwc_and_chw_agree(sample_arrays):
    hwc = sample_arrays["coffee"]
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    a, b = numpy_to_tensor(hwc), numpy_to_tensor(chw)
    assert a.shape == (3, 40, 60)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, pil_to_tensor(Image.fromarray(hwc)))


def test_numpy_grey_and_rgba():
    grey = np.full((4, 5), 51, np.uint8)
    torch.testing.assert_close(numpy_to_tensor(grey), torch.full((3, 4, 5), 0.2))
    rgba = np.zeros((4, 5, 4), np.float32)  # fully transparent black
    torch.testing.assert_close(numpy_to_tensor(rgba), torch.ones(3, 4, 5))


def test_numpy_uint16():
    arr = np.full((4, 4, 3), 65535, np.uint16)
    arr[0, 0] = 0
    x = numpy_to_tensor(arr)
    assert x.max() == 1.0 and x[:, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_numpy_float_in_range_passes_through():
    arr = np.random.default_rng(0).random((6, 7, 3))  # float64
    x = to_image_tensor(arr)
    assert x.shape == (1, 3, 6, 7) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1))


def test_numpy_float_out_of_range_is_rejected_when_scored():
    arr = np.full((8, 8, 3), 200.0, np.float32)
    with pytest.raises(InputError, match=r"images: .*divide by 255"):
        Colorfulness().score([arr])


@pytest.mark.parametrize("value", [200.0, float("nan")], ids=["0-255", "nan"])
def test_to_image_tensor_rejects_bad_float_arrays(value):
    with pytest.raises(InputError):
        to_image_tensor([np.full((8, 8, 3), value, np.float32)])


def test_numpy_bad_dtype_and_shape():
    with pytest.raises(InputError, match="dtype int64"):
        numpy_to_tensor(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(InputError, match="1, 3 or 4 channels"):
        numpy_to_tensor(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(InputError, match=r"shape \(4,\)"):
        numpy_to_tensor(np.zeros(4, np.uint8))


def test_tensor_uint8_is_divided_by_255():
    x8 = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    torch.testing.assert_close(to_image_tensor(x8), x8.float() / 255)
    torch.testing.assert_close(to_image_tensor([x8[0], x8[1]]), x8.float() / 255)
    torch.testing.assert_close(to_image_tensor(x8[0]), x8[:1].float() / 255)


def test_tensor_grey_and_rgba_batches_become_rgb():
    grey = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(to_image_tensor(grey), grey.expand(2, 3, 4, 4))
    rgba = torch.zeros(1, 4, 4, 4)  # transparent
    torch.testing.assert_close(to_image_tensor(rgba), torch.ones(1, 3, 4, 4))


def test_tensor_float_out_of_range_is_rejected():
    with pytest.raises(InputError, match="divide by 255"):
        to_image_tensor(torch.rand(2, 3, 4, 4) * 255)
    with pytest.raises(InputError, match="divide by 255"):
        to_image_tensor([torch.rand(3, 4, 4) * 255])


def test_mixed_sizes_come_back_as_a_list(sample_pils):
    out = to_image_tensor(list(sample_pils.values()))
    assert isinstance(out, list) and [tuple(x.shape) for x in out] == [
        (3, 48, 48),
        (3, 40, 60),
        (3, 36, 54),
        (3, 48, 48),
    ]
    assert group_by_shape(out) == [[0, 3], [1], [2]]
    assert group_by_shape(torch.rand(3, 3, 2, 2)) == [[0, 1, 2]]


def test_unsupported_item_and_empty_list():
    with pytest.raises(InputError, match="images: expected a tensor, PIL image"):
        to_image_tensor([{"not": "an image"}])
    with pytest.raises(InputError, match="empty list"):
        to_image_tensor([])


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def test_paths_are_read(tmp_path, sample_pils):
    paths = []
    for name, im in sample_pils.items():
        paths.append(tmp_path / f"{name}.png")
        im.save(paths[-1])
    out = Colorfulness().score(paths + [str(paths[0])])
    expected = Colorfulness().score(list(sample_pils.values()) + [sample_pils["astronaut"]])
    assert torch.equal(out.scores, expected.scores)


def test_truncated_png_names_the_path(tmp_path, sample_pils):
    path = tmp_path / "truncated.png"
    sample_pils["astronaut"].save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ItemReadError) as excinfo:
        load_image(path)
    assert str(path) in str(excinfo.value) and excinfo.value.path == str(path)
    with pytest.raises(ItemReadError, match="truncated.png"):
        Colorfulness().score([path])


def test_text_file_named_png_names_the_path(tmp_path):
    path = tmp_path / "not_an_image.png"
    path.write_text("hello, I am text\n")
    with pytest.raises(ItemReadError) as excinfo:
        to_image_tensor([path])
    assert str(path) in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ItemReadError, match="no such file") as excinfo:
        load_image(str(path))
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("size", [(8, 8), (1500, 2000)], ids=["8x8", "2000x1500"])
def test_small_and_large_images_flow_through_score(tmp_path, size):
    h, w = size
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path, compress_level=0)
    rm = Colorfulness()
    out = rm.score([path, Image.fromarray(arr), arr])
    assert out.scores.shape == (3,) and torch.isfinite(out.scores).all()
    assert out.scores[0] == out.scores[1] == out.scores[2]
    direct = rm(images=torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255).scores
    torch.testing.assert_close(out.scores[:1], direct)


# --------------------------------------------------------------------------------------
# videos
# --------------------------------------------------------------------------------------
def test_video_tensor_layout():
    v = torch.rand(2, 4, 3, 8, 8)
    assert to_video_tensor(v) is v
    torch.testing.assert_close(
        to_video_tensor((v * 255).to(torch.uint8)), (v * 255).to(torch.uint8).float() / 255
    )
    frames = (np.random.default_rng(0).random((4, 8, 8, 3)) * 255).astype(np.uint8)
    out = to_video_tensor([frames, frames])
    assert out.shape == (2, 4, 3, 8, 8)


def test_video_bcthw_error_mentions_permute():
    with pytest.raises(InputError) as excinfo:
        to_video_tensor(torch.rand(2, 3, 5, 8, 8))
    assert excinfo.value.field == "videos"
    assert "permute" in str(excinfo.value) and "(B,T,C,H,W)" in str(excinfo.value)
    with pytest.raises(InputError, match="load_video"):
        to_video_tensor("clip.mp4")

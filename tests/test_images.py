"""Tests for twinlock.daemon.faces.images: every file format comes back as uint8 RGB, H x W x 3.

OpenCV decodes BGR; a silent channel swap would train and run models on wrong colours, so each
test writes known colours with cv2 and checks the RGB order explicitly.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.errors import DataError, DataNotFoundError, TwinLockError
from twinlock.daemon.faces.images import decode_image, load_image, to_rgb

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def rgb_stripes(height: int = 6) -> np.ndarray:
    """Three vertical stripes, red | green | blue, in RGB order."""
    image = np.zeros((height, 9, 3), np.uint8)
    image[:, 0:3], image[:, 3:6], image[:, 6:9] = RED, GREEN, BLUE
    return image


def write_bgr(path: Path, rgb: np.ndarray, params: list[int] | None = None) -> Path:
    """Write an RGB array as cv2 expects it (BGR/BGRA), the way a camera or a user would."""
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        data = rgb[:, :, ::-1]
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        data = rgb[:, :, [2, 1, 0, 3]]
    else:
        data = rgb
    assert cv2.imwrite(str(path), np.ascontiguousarray(data), params or [])
    return path


def test_pure_red_png_is_red(tmp_path: Path) -> None:
    image = load_image(write_bgr(tmp_path / "red.png", np.full((5, 7, 3), RED, np.uint8)))
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 0, 0]
    assert (image == np.array(RED, np.uint8)).all()


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".ppm", ".tiff"])
def test_lossless_formats_round_trip_exactly(tmp_path: Path, suffix: str) -> None:
    stripes = rgb_stripes()
    image = load_image(write_bgr(tmp_path / f"stripes{suffix}", stripes))
    assert image.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(image, stripes)


def test_jpeg_keeps_colour_order(tmp_path: Path) -> None:
    stripes = np.repeat(np.repeat(rgb_stripes(), 8, axis=0), 8, axis=1)  # blocks beat JPEG blur
    path = write_bgr(tmp_path / "stripes.jpg", stripes, [cv2.IMWRITE_JPEG_QUALITY, 100])
    image = load_image(path)
    assert image.shape == stripes.shape and image.dtype == np.uint8
    for (x, colour) in [(12, RED), (36, GREEN), (60, BLUE)]:
        assert np.abs(image[24, x].astype(int) - colour).max() <= 8, (x, image[24, x])


def test_grey_pgm_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    path = tmp_path / "grey.pgm"
    assert cv2.imwrite(str(path), grey)
    image = load_image(path)
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)


def test_16_bit_png_keeps_the_high_byte(tmp_path: Path) -> None:
    rgb16 = np.zeros((4, 3, 3), np.uint16)
    rgb16[:, 0] = (65535, 0, 0)
    rgb16[:, 1] = (0, 0x8000, 0)
    rgb16[:, 2] = (0, 0, 0x12FF)
    image = load_image(write_bgr(tmp_path / "deep.png", rgb16))
    assert image.dtype == np.uint8 and image.shape == (4, 3, 3)
    assert image[0].tolist() == [[255, 0, 0], [0, 128, 0], [0, 0, 0x12]]
    grey16 = np.full((3, 3), 0xAB00, np.uint16)
    assert (load_image(write_bgr(tmp_path / "grey16.png", grey16)) == 0xAB).all()


def test_rgba_png_drops_alpha_keeps_colour(tmp_path: Path) -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (*RED, 255)
    rgba[:, 3:] = (*BLUE, 10)  # nearly transparent: the colour is still the stored colour
    image = load_image(write_bgr(tmp_path / "alpha.png", rgba))
    assert image.shape == (4, 6, 3)
    assert image[0, 0].tolist() == [255, 0, 0] and image[0, 5].tolist() == [0, 0, 255]


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF block (one IFD entry: Orientation) right after the JPEG's SOI."""
    assert jpeg[:2] == b"\xff\xd8"
    tiff = (b"MM\x00\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big")
            + (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
            + orientation.to_bytes(2, "big") + b"\x00\x00" + (0).to_bytes(4, "big"))
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Phone photos are stored sideways with an EXIF 'rotate' tag; enrolment must see them upright.

    Stored: 20 high x 40 wide, red left half. Orientation 6 means "rotate 90 degrees clockwise to
    display", so the upright picture is 40 high x 20 wide with red on top.
    """
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = RED
    stored[:, 20:] = BLUE
    plain = write_bgr(tmp_path / "plain.jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 100])
    path = tmp_path / "phone.jpg"
    path.write_bytes(with_exif_orientation(plain.read_bytes(), 6))
    assert load_image(plain).shape == (20, 40, 3)  # no tag: as stored
    image = load_image(path)
    assert image.shape == (40, 20, 3)
    assert np.abs(image[5, 10].astype(int) - RED).max() <= 10, image[5, 10]
    assert np.abs(image[35, 10].astype(int) - BLUE).max() <= 10, image[35, 10]


def test_decode_bytes_matches_load(tmp_path: Path) -> None:
    path = write_bgr(tmp_path / "stripes.png", rgb_stripes())
    np.testing.assert_array_equal(decode_image(path.read_bytes()), load_image(path))
    np.testing.assert_array_equal(decode_image(bytearray(path.read_bytes())), rgb_stripes())


def test_to_rgb_shapes_and_types() -> None:
    rgb = rgb_stripes()
    assert to_rgb(rgb) is not None and (to_rgb(rgb) == rgb).all()  # RGB in, RGB out
    np.testing.assert_array_equal(to_rgb(rgb[:, :, ::-1].copy(), assume_bgr=True), rgb)
    np.testing.assert_array_equal(to_rgb(rgb[:, :, :1]), np.repeat(rgb[:, :, :1], 3, axis=2))
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((*rgb.shape[:2], 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb(bgra, assume_bgr=True), rgb)
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb(rgba), rgb)
    grey16 = np.full((2, 2), 0x7F80, np.uint16)
    np.testing.assert_array_equal(to_rgb(grey16), np.full((2, 2, 3), 0x7F, np.uint8))
    with pytest.raises(DataError, match="pixel type"):
        to_rgb(rgb.astype(np.float32))
    with pytest.raises(DataError, match="shape"):
        to_rgb(np.zeros((4, 4, 2), np.uint8))


# --------------------------------------------------------------------------------------------------
# bad files: the right error class, and the file's name in the message
# --------------------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg.*empty") as caught:
        load_image(path)
    assert not isinstance(caught.value, DataNotFoundError)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 10)
    with pytest.raises(DataError, match="notes.jpg.*not a readable image"):
        load_image(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = write_bgr(tmp_path / "good.jpg", np.full((64, 64, 3), 90, np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(good.read_bytes()[:20])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(path)


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nobody.png"
    with pytest.raises(DataNotFoundError, match="nobody.png") as caught:
        load_image(path)
    # callers that only know the stdlib types still catch it
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, TwinLockError)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "pictures.jpg"
    folder.mkdir()
    with pytest.raises(DataError, match="pictures.jpg.*cannot read") as caught:
        load_image(folder)
    assert not isinstance(caught.value, DataNotFoundError)


# ---- sizes checked before decoding ------------------------------------------------------------


def png_of_zeros(path: Path, width: int, height: int) -> Path:
    """A real, complete grey PNG of ``width`` x ``height`` black pixels, streamed row by row so
    that making it needs no memory: a small file that decodes to a huge array."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), bytes(width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                       8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_small_file_of_too_many_pixels_is_skipped_before_decoding(tmp_path: Path) -> None:
    import resource
    import time

    path = png_of_zeros(tmp_path / "huge.png", 20000, 20000)  # 400 Mpix: 1.2 GB as RGB
    assert path.stat().st_size < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(DataError, match=r"huge.png: 20000x20000 pixels, over the 50000000 pixel "
                                        r"cap \(checked before decoding\)"):
        load_image(path)
    assert time.monotonic() - started < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_a_header_claiming_40000_squared_is_a_reason_not_a_cv2_error(tmp_path: Path) -> None:
    real = png_of_zeros(tmp_path / "small.png", 8, 8).read_bytes()
    forged = bytearray(real)
    forged[16:24] = (40000).to_bytes(4, "big") * 2  # IHDR width and height (CRC now wrong)
    path = tmp_path / "forged.png"
    path.write_bytes(bytes(forged))
    with pytest.raises(DataError, match="40000x40000 pixels, over the"):
        load_image(path)


def test_a_replay_folder_skips_an_oversized_picture_and_moves_on(tmp_path: Path) -> None:
    from twinlock.daemon.camera.replay import ReplayCamera

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 2):
        write_bgr(folder / f"{i}.png", np.full((16, 16, 3), 40 * i, np.uint8))
    png_of_zeros(folder / "1.png", 20000, 20000)
    camera = ReplayCamera(str(folder), realtime=False)
    camera.open()
    frames = []
    while (frame := camera.read()) is not None:
        frames.append(frame.source_index)
    camera.close()
    assert frames == [0, 2] and camera.skipped == 1  # played once, not from frame 0 forever


def test_image_sizes_come_from_headers_for_every_format(tmp_path: Path) -> None:
    from twinlock.daemon.faces.images import image_size

    picture = np.zeros((13, 21, 3), np.uint8)
    for suffix in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".pgm"):
        data = cv2.imencode(suffix, picture if suffix != ".pgm" else picture[:, :, 0])[1]
        assert image_size(data.tobytes()) == (21, 13), suffix
    assert image_size(b"GIF89a\x15\x00\x0d\x00" + bytes(20)) == (21, 13)
    assert image_size(b"hello, not an image") is None


def test_a_huge_file_or_a_fifo_is_not_read(tmp_path: Path) -> None:
    import os
    import threading

    big = tmp_path / "big.jpg"
    with big.open("wb") as handle:
        handle.truncate(200 * 1024 * 1024)  # sparse
    with pytest.raises(DataError, match="byte cap for an image file"):
        load_image(big)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    errors: list[Exception] = []
    reader = threading.Thread(target=lambda: errors.append(
        pytest.raises(DataError, load_image, fifo).value), daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "load_image blocked on a FIFO"
    assert "not a regular file" in str(errors[0])

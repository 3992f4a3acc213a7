"""Videos on disk: through imageio's ffmpeg, and through OpenCV where no ffmpeg binary is installed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nerf import visualize


def moving_square(count: int = 12, height: int = 48, width: int = 66) -> list[np.ndarray]:
    frames = []
    for k in range(count):
        frame = np.full((height, width, 3), 255, np.uint8)
        frame[10:30, 4 * k:4 * k + 20] = (200, 40, 20)
        frames.append(frame)
    return frames


def read_back(path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    return np.stack(frames)


@pytest.mark.parametrize("ffmpeg", [True, False], ids=["imageio-ffmpeg", "opencv"])
def test_a_video_holds_its_frames_in_rgb_order(tmp_path, monkeypatch, ffmpeg) -> None:
    if ffmpeg and not visualize.ffmpeg_available():
        pytest.skip("imageio-ffmpeg has no ffmpeg binary here")
    if not ffmpeg:
        monkeypatch.setattr(visualize, "ffmpeg_available", lambda: False)
    frames = moving_square()
    path = visualize.save_video(tmp_path / "orbit.mp4", frames)
    got = read_back(path).astype(int)
    assert got.shape == (len(frames), *frames[0].shape)
    assert np.abs(got - np.stack(frames).astype(int)).mean() < 4  # lossy codecs, same picture
    red = got[:, 20, :, 0] > 150 + got[:, 20, :, 2]  # where the red square is, per frame
    assert [int(np.argmax(row)) for row in red] == pytest.approx([4 * k for k in range(len(frames))], abs=2)
    assert [p.name for p in tmp_path.iterdir()] == ["orbit.mp4"]  # no temporary file left beside it

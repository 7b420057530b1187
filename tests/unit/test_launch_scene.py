"""How the phone opened the login page decides what it may do (security review M4, QR relay): a camera
scan is normal, a code recognised in a picture is warned about, share cards and other mini-programs
are refused."""

from __future__ import annotations

import pytest

from services.gateway.errors import status_for
from services.qrcode.errors import LaunchSceneRefused
from services.qrcode.launch import launch_kind


@pytest.mark.parametrize("scene", [1047, 1011])
def test_a_camera_scan_is_normal(scene: int) -> None:
    assert launch_kind(scene) == "camera"


@pytest.mark.parametrize("scene", [1048, 1049, 1012, 1013])
def test_a_code_recognised_in_an_image_or_picked_from_the_album_is_warned_about(scene: int) -> None:
    assert launch_kind(scene) == "image"


def test_a_mini_program_that_does_not_say_is_let_through_as_unknown() -> None:
    assert launch_kind(None) == "unknown"


@pytest.mark.parametrize(
    ("scene", "said"),
    [
        (1007, "a share card"),
        (1008, "a share card"),
        (1036, "a share card"),
        (1044, "a share card"),
        (1096, "a share card"),
        (1037, "another mini-program"),
        (1038, "another mini-program"),
        (1001, "a way other than scanning"),
        (0, "a way other than scanning"),
    ],
)
def test_share_cards_other_mini_programs_and_everything_else_are_refused(scene: int, said: str) -> None:
    with pytest.raises(LaunchSceneRefused) as refused:
        launch_kind(scene)
    assert refused.value.code == "launch_scene_refused"
    assert said in refused.value.message and str(scene) in refused.value.message
    assert status_for("launch_scene_refused") == 403

"""Which ways of opening the login page may approve a login (security review M4: QR relay).

WeChat tells the mini-program how it was opened: its launch scene. Scanning the code off a screen
with the camera (1047) is the normal way. A code recognised in a picture, long-pressed in a chat
(1048) or picked from the album (1049), is how a relayed code arrives ("长按识别领红包"): allowed, with
a strong warning and a second tap on the phone. A share card, another mini-program or any other way
cannot be a scan of the code on the user's own screen: refused, before the scene changes.
"""

from __future__ import annotations

from services.qrcode.errors import LaunchSceneRefused
from shared.messages import LaunchKind

# WeChat's scene values (developers.weixin.qq.com, 场景值列表). The plain-QR ones (1011-1013) are the
# same gestures for a QR code, which the WeChat simulator draws instead of a round mini-program code.
CAMERA_SCENES: dict[int, str] = {1047: "扫描小程序码", 1011: "扫描二维码"}
IMAGE_SCENES: dict[int, str] = {
    1048: "长按图片识别小程序码",
    1049: "扫描手机相册中选取的小程序码",
    1012: "长按图片识别二维码",
    1013: "扫描手机相册中选取的二维码",
}
# Named in the refusal, so a log or a support ticket says what the user did.
SHARE_SCENES: dict[int, str] = {
    1007: "单人聊天会话中的小程序消息卡片",
    1008: "群聊会话中的小程序消息卡片",
    1036: "App 分享消息卡片",
    1044: "带 shareTicket 的小程序消息卡片",
    1073: "客服消息列表下发的小程序消息卡片",
    1074: "公众号会话下发的小程序消息卡片",
    1096: "聊天记录",
    1154: "朋友圈内打开“单页模式”",
}
OTHER_MINIPROGRAM_SCENES: dict[int, str] = {1037: "小程序打开小程序", 1038: "从另一个小程序返回"}


def launch_kind(scene: int | None) -> LaunchKind:
    """``camera``, ``image`` or ``unknown`` (no scene: a mini-program that predates this check);
    raises :class:`LaunchSceneRefused` for every other launch scene."""
    if scene is None:
        return "unknown"
    if scene in CAMERA_SCENES:
        return "camera"
    if scene in IMAGE_SCENES:
        return "image"
    if scene in SHARE_SCENES:
        how = f"a share card ({SHARE_SCENES[scene]})"
    elif scene in OTHER_MINIPROGRAM_SCENES:
        how = f"another mini-program ({OTHER_MINIPROGRAM_SCENES[scene]})"
    else:
        how = "a way other than scanning the code"
    raise LaunchSceneRefused(
        f"the login page was opened from {how}, launch scene {scene}: only a scan of the code on the "
        "computer's screen may log in"
    )

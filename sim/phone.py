"""A simulated phone: it does what the mini-program login page does, against a real gateway.

It reads the scene out of a code image (as a camera would), gets a ``wx.login()`` code for its user
from the WeChat simulator, and calls the gateway's scan / confirm / cancel. Or it types the login code a
browser on the phone shows (``--login-code``), as the mini-program's home page does.

    python -m sim.phone --gateway http://127.0.0.1:8080 --sim http://127.0.0.1:9100 code.png
    python -m sim.phone --login-code K7QX-M2PA
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


class PhoneError(Exception):
    """The gateway or the simulator refused a call."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        self.code = code if isinstance(code, str) else None
        super().__init__(f"HTTP {status}: {body}")


def decode_scene(image: bytes | str) -> str:
    """The scene encoded in a code image (PNG/JPEG bytes, or a ``data:`` URI)."""
    import zxingcpp
    from PIL import Image

    if isinstance(image, str):
        if not image.startswith("data:"):
            raise ValueError("expected a data: URI")
        image = base64.b64decode(image.split(",", 1)[1])
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(image)).convert("L"))
    for result in results:
        if result.text:
            return str(result.text)
    raise ValueError("no code found in the image")


@dataclass
class Phone:
    """One WeChat user's phone with the mini-program open."""

    session: aiohttp.ClientSession
    gateway: str
    sim: str
    openid: str | None = None
    # Send a wx.login code with the scan, as the mini-program page does (the confirm then needs none).
    code_with_scan: bool = True
    # scene → the scan token the gateway gave this phone (what the mini-program page keeps in memory)
    scan_tokens: dict[str, str] = field(default_factory=dict)
    # scene → whether the scan's code identified this phone
    identified: dict[str, bool] = field(default_factory=dict)
    # How WeChat opened the login page: 1047, the camera scanned the code (1048/1049: a code in an
    # image, warned about; a share card 1007 or another mini-program 1037: refused). None: not sent,
    # as a mini-program that predates the check.
    launch_scene: int | None = 1047
    # The phone's own address as a trusted proxy reports it to the gateway (X-Forwarded-For), so a
    # test on 127.0.0.1 can scan from a public address somewhere.
    forwarded_for: str | None = None

    async def _post(self, url: str, body: dict[str, Any]) -> Any:
        to_gateway = url.startswith(self.gateway)
        headers = {"X-Forwarded-For": self.forwarded_for} if self.forwarded_for and to_gateway else None
        async with self.session.post(url, json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise PhoneError(resp.status, data)
            return data

    async def register(self, **traits: Any) -> str:
        """Create this phone's WeChat user in the simulator (``unionid``, ``phone``, ``blocked``).

        Call it first: a phone that already asked for a code (a scan sends one) has a user, and this
        replaces it with a new one.
        """
        user = await self._post(f"{self.sim}/sim/users", traits)
        self.openid = str(user["openid"])
        return self.openid

    async def wx_login(self) -> str:
        """What ``wx.login()`` returns: a fresh single-use code."""
        if self.openid is None:
            await self.register()
        data = await self._post(f"{self.sim}/sim/codes", {"openid": self.openid})
        return str(data["code"])

    async def phone_number_code(self) -> str:
        """What tapping a getPhoneNumber button returns (register with ``phone=...`` first)."""
        if self.openid is None:
            await self.register()
        data = await self._post(f"{self.sim}/sim/phone-codes", {"openid": self.openid})
        return str(data["code"])

    async def encrypted(self, data: dict[str, Any]) -> dict[str, str]:
        """``{encrypted_data, iv}`` as an open-data API would return ``data`` to the page."""
        if self.openid is None:
            await self.wx_login()
        result: dict[str, str] = await self._post(
            f"{self.sim}/sim/encrypted-data", {"openid": self.openid, "data": data}
        )
        return result

    async def scan(
        self,
        scene: str,
        *,
        with_code: bool | None = None,
        code: str | None = None,
        scan_token: str | None = None,
    ) -> dict[str, Any]:
        """Open the login page for ``scene``: ``POST /api/mp/scan``; keeps the scan token it gets.

        Like the mini-program page, it sends a wx.login code with the scan (``code``, else a fresh one
        unless ``with_code`` or the phone's ``code_with_scan`` says not to), so the confirm can go
        without one. ``scan_token``: a token of the phone's own, which a retry sends again.
        """
        body: dict[str, Any] = {"scene": scene}
        if self.launch_scene is not None:
            body["launch_scene"] = self.launch_scene
        if scan_token is not None:
            body["scan_token"] = scan_token
        if code is not None:
            body["code"] = code
        elif self.code_with_scan if with_code is None else with_code:
            body["code"] = await self.wx_login()
        result: dict[str, Any] = await self._post(f"{self.gateway}/api/mp/scan", body)
        self.scan_tokens[scene] = str(result["scan_token"])
        self.identified[scene] = result.get("identified") is True
        return result

    async def enter_code(self, login_code: str) -> dict[str, Any]:
        """Type the login code a browser on this phone shows into the mini-program's home page:
        ``POST /api/mp/enter_code {login_code, code}``. Like a scan, it keeps the scan token it gets
        (under the scene the answer names); the confirm then needs no code."""
        body = {"login_code": login_code, "code": await self.wx_login()}
        result: dict[str, Any] = await self._post(f"{self.gateway}/api/mp/enter_code", body)
        scene = str(result["scene"])
        self.scan_tokens[scene] = str(result["scan_token"])
        self.identified[scene] = result.get("identified") is True
        return result

    async def confirm(
        self,
        scene: str,
        code: str | None = None,
        *,
        scan_token: str | None = None,
        with_code: bool | None = None,
    ) -> dict[str, Any]:
        """Tap 确认登录: ``POST /api/mp/confirm`` with this phone's scan token.

        A wx.login code goes with it when given, when ``with_code`` asks for one, or when the scan did
        not identify this phone (a fresh one from the simulator).
        """
        body: dict[str, Any] = {"scene": scene, "scan_token": scan_token or self.scan_tokens.get(scene, "")}
        if code is not None:
            body["code"] = code
        elif with_code if with_code is not None else not self.identified.get(scene, False):
            body["code"] = await self.wx_login()
        result: dict[str, Any] = await self._post(f"{self.gateway}/api/mp/confirm", body)
        return result

    async def cancel(
        self, scene: str, *, scan_token: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """Tap 取消 (or 不是我, ``reason="not_me"``): ``POST /api/mp/cancel`` with this phone's scan token."""
        body = {"scene": scene, "scan_token": scan_token or self.scan_tokens.get(scene, "")}
        if reason is not None:
            body["reason"] = reason
        result: dict[str, Any] = await self._post(f"{self.gateway}/api/mp/cancel", body)
        return result

    async def scan_and_confirm(self, image: bytes | str) -> str:
        """The whole phone side of a login from a code image; returns the scene."""
        scene = decode_scene(image)
        await self.scan(scene)
        await self.confirm(scene)
        return scene


async def _main(args: argparse.Namespace, image: bytes | None) -> None:
    async with aiohttp.ClientSession() as session:
        phone = Phone(session, args.gateway.rstrip("/"), args.sim.rstrip("/"), launch_scene=args.launch_scene)
        if image is None:  # typed on the home page: the answer names the scene
            entered = await phone.enter_code(args.login_code)
            scene = str(entered["scene"])
            print(json.dumps({"scene": scene, "scan": entered}, ensure_ascii=False))
        else:
            scene = decode_scene(image)
            print(json.dumps({"scene": scene, "scan": await phone.scan(scene)}, ensure_ascii=False))
        if args.cancel or args.not_me:
            print(json.dumps(await phone.cancel(scene, reason="not_me" if args.not_me else None)))
        else:
            print(json.dumps(await phone.confirm(scene)))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sim.phone", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", nargs="?", help="a PNG/JPEG of the code (e.g. a screenshot)")
    parser.add_argument("--login-code", help="type this login code (a browser on the phone shows it) instead")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--sim", default="http://127.0.0.1:9100")
    parser.add_argument("--cancel", action="store_true", help="decline instead of confirming")
    parser.add_argument("--not-me", action="store_true", help="tap 不是我: decline, telling the browser why")
    parser.add_argument(
        "--launch-scene", type=int, default=1047, help="WeChat's launch scene (1047 camera, 1048 chat image)"
    )
    args = parser.parse_args()
    if (args.image is None) == (args.login_code is None):
        parser.error("give a code image or --login-code, not both")
    image = None
    if args.image is not None:
        with open(args.image, "rb") as f:
            image = f.read()
    asyncio.run(_main(args, image))


if __name__ == "__main__":
    main()

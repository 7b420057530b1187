"""A faithful, offline stand-in for api.weixin.qq.com (see ``../shared/wechat-api.md``)."""

from sim.wechat.app import create_app

__all__ = ["create_app"]

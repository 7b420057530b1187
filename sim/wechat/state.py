"""Everything the simulator remembers: virtual users, codes, access tokens, quotas, counters, its clock.

All lifetimes, quotas and rate windows run on :meth:`SimState.now`, which tests move forward with
``POST /sim/clock``. Minute windows are calendar minutes of that clock; daily quotas reset at midnight
Beijing time (UTC+8) of that clock.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from sim.wechat.faults import FaultBook

ALNUM = string.ascii_letters + string.digits
ID_ALPHABET = ALNUM + "_-"

TOKEN_LIFETIME = 7200
TOKEN_OVERLAP = 300  # old and new cgi-bin/token values both work for five minutes
STABLE_RENEW_BEFORE = 300  # stable_token renews five minutes before expiry
CODE_LIFETIME = 300  # wx.login codes
PHONE_CODE_LIFETIME = 300  # getPhoneNumber button codes
# wx.login may issue a new session_key, but "not on every call: the refresh has a minimum period"
# (official login guide). The period is not published; five minutes is this simulator's choice.
SESSION_KEY_MIN_AGE = 300
BEIJING_OFFSET = 8 * 3600

DEFAULT_PAGES = ("pages/index/index", "pages/login/index")

# Real access tokens: two digits, an underscore, then URL-safe characters (79 to 157 seen).
ACCESS_TOKEN_SHAPE = re.compile(r"^[0-9]{2,3}_[A-Za-z0-9_-]{40,600}$")

Period = Literal["minute", "day"]
# What jscode2session and getuserphonenumber do with a code this simulator never issued (a real
# wx.login code from WeChat DevTools, say): "off" refuses it (40029) as WeChat would; "sticky" takes
# it as the current developer user's; "new" takes it as a brand-new user's.
AnyCode = Literal["off", "sticky", "new"]
ANY_CODE_MODES: tuple[AnyCode, ...] = ("off", "sticky", "new")


def _rand(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _prefix(seed: str) -> str:
    # Real openids of one app share their first characters (and unionids of one Open Platform
    # account theirs); derive five stable characters so ids look like they come from one app.
    digest = base64.urlsafe_b64encode(hashlib.sha256(seed.encode()).digest()).decode()
    return "".join(c for c in digest if c in ID_ALPHABET)[:5]


def _derived(seed: str, n: int) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(seed.encode()).digest()).decode()
    return "".join(c for c in digest if c in ID_ALPHABET)[:n]


def new_openid(appid: str = "", *, seed: str | None = None) -> str:
    """28 characters starting with ``o``, like real openids (the same for the same ``seed``)."""
    tail = _rand(ID_ALPHABET, 22) if seed is None else _derived("openid-of:" + seed, 22)
    return "o" + _prefix("openid:" + appid) + tail


def new_unionid(appid: str = "", *, seed: str | None = None) -> str:
    """28 characters starting with ``o``, like real unionids (the same for the same ``seed``)."""
    tail = _rand(ID_ALPHABET, 22) if seed is None else _derived("unionid-of:" + seed, 22)
    return "o" + _prefix("unionid:" + appid) + tail


def virtual_phone(openid: str) -> str:
    """A mainland mobile number (11 digits, ``138…``) derived from ``openid``: stable per user."""
    digest = hashlib.sha256(("phone:" + openid).encode()).digest()
    return f"138{int.from_bytes(digest[:8], 'big') % 10**8:08d}"


def dev_user_seed(appid: str, index: int) -> str:
    """What the ids of developer user number ``index`` of ``appid`` derive from."""
    return f"dev-user:{appid}:{index}"


def new_login_code() -> str:
    """32 alphanumerics, like a real wx.login code."""
    return _rand(ALNUM, 32)


def new_phone_code() -> str:
    """64 lowercase hex digits, like the getPhoneNumber code in the official example."""
    return secrets.token_hex(32)


def new_session_key() -> str:
    """Base64 of 16 random bytes (24 characters)."""
    return base64.b64encode(secrets.token_bytes(16)).decode()


def new_url_link() -> str:
    """``https://wxaurl.cn/`` and 11 alphanumerics, like real URL Links."""
    return "https://wxaurl.cn/" + _rand(ALNUM, 11)


def new_access_token() -> str:
    """``NN_`` then URL-safe characters, 136 long, like real access tokens."""
    return f"{secrets.randbelow(90) + 10}_" + _rand(ID_ALPHABET, 133)


@dataclass
class Limits:
    """WeChat's quotas as the simulator enforces them (``None`` = not enforced).

    Defaults are WeChat's published numbers; tests lower them through ``POST /sim/config``.
    """

    token_per_day: int | None = 2000  # cgi-bin/token; mini-program figure from WeChat staff answers
    stable_token_per_minute: int | None = 10_000
    stable_token_per_day: int | None = 500_000
    force_refresh_per_day: int | None = 20
    force_refresh_min_interval_s: float = 30.0
    qrcode_per_minute: int | None = 5000  # wxa/getwxacodeunlimit
    code2session_per_user_minute: int | None = 100  # sns/jscode2session, per openid
    # No published limit; 45011 is documented for it, so it can be switched on.
    phone_per_minute: int | None = None
    url_link_per_day: int | None = 500_000  # wxa/generate_urllink, every link of the app (45009)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The limit names ``POST /sim/config {"limits": {...}}`` accepts."""
        return tuple(f.name for f in fields(cls))


@dataclass
class SimConfig:
    """How the simulated mini-program is set up (restored by ``POST /sim/reset``)."""

    open_platform_bound: bool = True  # unionid is returned only for apps bound to an Open Platform
    published_pages: frozenset[str] = frozenset(DEFAULT_PAGES)  # pages check_path accepts
    country_code_as: Literal["string", "number"] = "string"  # getuserphonenumber's countryCode
    limits: Limits = field(default_factory=Limits)
    any_code: AnyCode = "off"  # codes this simulator never issued: refused unless switched on
    # A mini-program registered by a person (个人主体), not an organisation: WeChat gives it no URL
    # Link, URL Scheme or Short Link (wxa/generate_urllink answers 40002).
    personal: bool = False



@dataclass
class User:
    """A virtual WeChat user of the simulated mini-program."""

    openid: str
    unionid: str | None = None
    phone: str | None = None  # national number, digits only
    country_code: str = "86"
    blocked: bool = False
    session_key: str | None = None
    session_key_issued_at: float | None = None

    def view(self) -> dict[str, object]:
        """The user as the control API shows it (this is a development tool: the key is included)."""
        out: dict[str, object] = {"openid": self.openid, "blocked": self.blocked}
        if self.unionid:
            out["unionid"] = self.unionid
        if self.phone:
            out["phone"] = self.phone
            out["country_code"] = self.country_code
        if self.session_key:
            out["session_key"] = self.session_key
        return out


@dataclass
class LoginCode:
    """What ``wx.login()`` returned on a user's phone."""

    code: str
    openid: str
    issued_at: float
    used: bool = False


@dataclass
class PhoneCode:
    """What a getPhoneNumber button returned (``e.detail.code``)."""

    code: str
    openid: str
    issued_at: float
    used: bool = False


@dataclass
class UrlLink:
    """A URL Link ``wxa/generate_urllink`` handed out: what opening it in WeChat does."""

    url: str
    path: str  # the page (empty: the home page), as given without a leading "/"
    query: str
    env_version: str
    expires_at: float


@dataclass
class Token:
    """An access_token the simulator handed out."""

    value: str
    kind: str  # "basic" (cgi-bin/token) or "stable" (cgi-bin/stable_token): completely isolated
    expires_at: float
    invalid_from: float | None = None  # set when superseded (plus overlap) or force-refreshed


class SimState:
    """The simulator's memory; ``now()`` is its clock, which tests can move forward."""

    def __init__(
        self,
        *,
        appid: str,
        secret: str,
        open_platform_bound: bool = True,
        published_pages: Iterable[str] = DEFAULT_PAGES,
        limits: Limits | None = None,
        any_code: AnyCode = "off",
        personal: bool = False,
    ) -> None:
        self.appid = appid
        self.secret = secret
        self._initial = SimConfig(
            open_platform_bound=open_platform_bound,
            published_pages=frozenset(published_pages),
            limits=limits or Limits(),
            any_code=any_code,
            personal=personal,
        )
        self.faults = FaultBook()
        self.reset()

    def reset(self) -> None:
        """Forget everything: users, codes, tokens, quotas, counters, faults, clock offset, config."""
        self.clock_offset = 0.0
        self.config = replace(self._initial, limits=replace(self._initial.limits))
        self.users: dict[str, User] = {}
        self.codes: dict[str, LoginCode] = {}
        self.phone_codes: dict[str, PhoneCode] = {}
        self.url_links: dict[str, UrlLink] = {}  # by the link itself
        self.tokens: dict[str, Token] = {}
        self.current: dict[str, Token] = {}  # kind -> newest token
        self.counters: Counter[str] = Counter()
        self._windows: dict[str, tuple[int, int]] = {}  # quota key -> (window index, calls)
        self.last_force_refresh: float | None = None
        # The developer user that "sticky" any-code mode logs in: number 1 until POST /sim/dev-user.
        self.dev_index = 1
        self.dev_openid: str | None = None
        self.faults.clear()

    # -- compatibility accessors --

    @property
    def open_platform_bound(self) -> bool:
        """Whether the app is bound to an Open Platform account (so unionids are returned)."""
        return self.config.open_platform_bound

    @open_platform_bound.setter
    def open_platform_bound(self, value: bool) -> None:
        self.config.open_platform_bound = value

    @property
    def limits(self) -> Limits:
        """The quotas in force."""
        return self.config.limits

    # -- clock --

    def now(self) -> float:
        """Simulated time (epoch seconds)."""
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward; returns the new simulated time."""
        self.clock_offset += seconds
        return self.now()

    def window(self, period: Period) -> int:
        """Index of the current calendar minute, or of the current Beijing day."""
        now = self.now()
        if period == "minute":
            return int(now // 60)
        return int((now + BEIJING_OFFSET) // 86400)

    def used(self, key: str, period: Period) -> int:
        """Calls counted against ``key`` in the current window."""
        window, calls = self._windows.get(f"{period}:{key}", (-1, 0))
        return calls if window == self.window(period) else 0

    def exhausted(self, key: str, period: Period, limit: int | None) -> bool:
        """True when ``key`` has used up ``limit`` in this window (never when the limit is None)."""
        return limit is not None and self.used(key, period) >= limit

    def count(self, key: str, period: Period) -> None:
        """Count one call against ``key`` in this window."""
        self._windows[f"{period}:{key}"] = (self.window(period), self.used(key, period) + 1)

    def take(self, key: str, period: Period, limit: int | None) -> bool:
        """Count one call against ``limit`` for this window; False (and not counted) when over it.

        Refused calls are not counted: [unverified] whether WeChat counts them is not published.
        """
        if self.exhausted(key, period, limit):
            return False
        self.count(key, period)
        return True

    # -- users and codes --

    def add_user(
        self,
        *,
        unionid: bool = False,
        phone: str | None = None,
        blocked: bool = False,
        country_code: str = "86",
    ) -> User:
        """A new virtual user (with a unionid when asked; it is only returned for bound apps)."""
        user = User(
            openid=new_openid(self.appid),
            unionid=new_unionid(self.appid) if unionid else None,
            phone=phone,
            country_code=country_code,
            blocked=blocked,
        )
        self.users[user.openid] = user
        return user

    def issue_code(self, openid: str, value: str | None = None) -> LoginCode:
        """``wx.login()`` on the user's phone: a fresh code (or ``value``), and maybe a new session_key."""
        now = self.now()
        user = self.users[openid]
        if user.session_key is None or now - (user.session_key_issued_at or 0) >= SESSION_KEY_MIN_AGE:
            # Only one session_key is valid at a time: the previous one stops working now.
            user.session_key, user.session_key_issued_at = new_session_key(), now
        code = LoginCode(value or new_login_code(), openid, now)
        self._prune(self.codes, CODE_LIFETIME)
        self.codes[code.code] = code
        return code

    def issue_phone_code(self, openid: str, value: str | None = None) -> PhoneCode:
        """The user tapped a getPhoneNumber button and agreed."""
        code = PhoneCode(value or new_phone_code(), openid, self.now())
        self._prune(self.phone_codes, PHONE_CODE_LIFETIME)
        self.phone_codes[code.code] = code
        return code

    # -- any-code mode (WeChat DevTools against the simulator) --

    def dev_user(self) -> User:
        """The developer user "sticky" mode logs in, created on first use.

        Developer user number *n* of an appid always has the same openid, unionid and phone (they
        derive from appid and *n*), so it is the same user after a restart or ``POST /sim/reset``.
        """
        if self.dev_openid is not None and self.dev_openid in self.users:
            return self.users[self.dev_openid]
        seed = dev_user_seed(self.appid, self.dev_index)
        openid = new_openid(self.appid, seed=seed)
        user = self.users.get(openid)
        if user is None:
            unionid = new_unionid(self.appid, seed=seed)
            user = User(openid=openid, unionid=unionid, phone=virtual_phone(openid))
            self.users[openid] = user
        self.dev_openid = openid
        return user

    def dev_user_number(self) -> int | None:
        """The number of the current developer user (None when one was chosen by openid)."""
        numbered = new_openid(self.appid, seed=dev_user_seed(self.appid, self.dev_index))
        return self.dev_index if self.dev_user().openid == numbered else None

    def choose_dev_user(self, *, index: int | None = None, openid: str | None = None) -> User:
        """Make the user ``openid``, or developer user ``index`` (default: the next number), current."""
        if openid is not None:
            self.dev_openid = openid
            return self.users[openid]
        self.dev_index, self.dev_openid = index or self.dev_index + 1, None
        return self.dev_user()

    def _any_code_user(self, openid: str | None = None) -> User:
        if openid is not None and openid in self.users:
            return self.users[openid]
        if self.config.any_code == "new":
            user = self.add_user(unionid=True)
            user.phone = virtual_phone(user.openid)
            return user
        return self.dev_user()

    def accept_unknown_code(self, value: str) -> LoginCode | None:
        """In any-code mode, a wx.login code never issued here becomes a virtual user's; else None.

        The code is remembered like an issued one, so using it twice is 40163 as on WeChat.
        """
        if self.config.any_code == "off":
            return None
        return self.issue_code(self._any_code_user().openid, value)

    def accept_unknown_phone_code(self, value: str, openid: str | None) -> PhoneCode | None:
        """In any-code mode, a getPhoneNumber code never issued here gives a virtual phone; else None.

        The phone is that of ``openid`` when it is a user here (one without a phone gets a virtual
        number), otherwise that of the user a wx.login code would have given.
        """
        if self.config.any_code == "off":
            return None
        user = self._any_code_user(openid)
        if user.phone is None:
            user.phone = virtual_phone(user.openid)
        return self.issue_phone_code(user.openid, value)

    def _prune(self, codes: dict[str, LoginCode] | dict[str, PhoneCode], lifetime: float) -> None:
        # An expired code answers 40029 whether it is remembered or not, so forgetting expired ones
        # keeps long benchmark runs from growing memory without changing any answer. (In any-code
        # mode a forgotten code would be taken as a new one; those runs stay far below the bound.)
        if len(codes) < 4096:
            return
        horizon = self.now() - lifetime
        for key in [k for k, c in codes.items() if c.issued_at < horizon]:
            del codes[key]

    # -- URL Links --

    def add_url_link(self, *, path: str, query: str, env_version: str, expires_at: float) -> UrlLink:
        """Remember a URL Link handed out (so that "opening" it can say where it leads)."""
        link = UrlLink(new_url_link(), path, query, env_version, expires_at)
        self.url_links[link.url] = link
        return link

    # -- tokens --

    def token_state(self, value: str) -> str:
        """``valid``, ``expired``, ``invalid`` or ``malformed`` for an access_token presented to an API."""
        token = self.tokens.get(value)
        now = self.now()
        if token is None:
            return "invalid" if ACCESS_TOKEN_SHAPE.match(value) else "malformed"
        # Cut short by a newer token: "not latest" (40001); reaching its natural end: 42001.
        cut_short = token.invalid_from is not None and token.invalid_from < token.expires_at
        if cut_short and token.invalid_from is not None and now >= token.invalid_from:
            return "invalid"
        if now >= token.expires_at:
            return "expired"
        return "valid"

    def mint_token(self, kind: str, *, overlap: float) -> Token:
        """A new token of ``kind``; the previous one stops working after ``overlap`` seconds."""
        now = self.now()
        previous = self.current.get(kind)
        if previous is not None:
            limit = now + overlap
            previous.invalid_from = min(previous.invalid_from or limit, limit)
        token = Token(new_access_token(), kind, now + TOKEN_LIFETIME)
        self.tokens[token.value] = token
        self.current[kind] = token
        return token

"""Errors of the session service; the gateway maps each ``code`` to an HTTP status."""

from __future__ import annotations

from shared.errors import ServiceError


class CodeInvalid(ServiceError):
    """WeChat refused the wx.login code (unknown, expired or already used)."""

    code = "code_invalid"
    default_message = "the login code from wx.login() is invalid or expired; call wx.login() again"


class UserBlocked(ServiceError):
    """WeChat flagged the user as high-risk (40226)."""

    code = "user_blocked"
    default_message = "WeChat does not allow this user to log in"


class WeChatUnavailable(ServiceError):
    """WeChat could not be reached or is rate limiting us."""

    code = "wechat_unavailable"
    default_message = "WeChat is not answering, try again shortly"


class SceneNotReady(ServiceError):
    """The scene cannot be confirmed (not scanned, expired, cancelled, unknown)."""

    code = "scene_not_scanned"
    default_message = "the login code has not been scanned"


class UserNotFound(ServiceError):
    """The user behind a login no longer exists."""

    code = "user_not_found"
    default_message = "unknown user"


class CodeInProgress(ServiceError):
    """The same wx.login code is being exchanged by another request right now."""

    code = "code_in_progress"
    default_message = "this login is already being processed"


class CodeRequired(ServiceError):
    """A confirm without a code, from a phone whose scan sent no code that could be exchanged."""

    code = "code_required"
    default_message = "send a code from wx.login() with the confirm: the scan did not identify this phone"


class CodeAlreadyUsed(ServiceError):
    """The wx.login code was already spent on another login (a scene, or mini-program login)."""

    code = "code_invalid"
    default_message = "this wx.login code was already used; call wx.login() again"


class RefreshInvalid(ServiceError):
    """The refresh token is unknown, expired, or its session has ended."""

    code = "refresh_invalid"
    default_message = "the refresh token is not valid; log in again"


class RefreshReused(ServiceError):
    """A refresh token that was already spent came back: its whole session is revoked."""

    code = "refresh_reused"
    default_message = "the refresh token was already used; the session has been ended, log in again"


class SessionEnded(ServiceError):
    """The access token's session (``sid``) was logged out or revoked."""

    code = "session_ended"
    default_message = "this session has ended; log in again"


class UnionIdTaken(ServiceError):
    """WeChat reports a unionid that is already linked to another user."""

    code = "unionid_taken"
    default_message = "this WeChat account's unionid is already linked to another user"


class PhoneTaken(ServiceError):
    """The phone number is already bound to another user."""

    code = "phone_taken"
    default_message = "this phone number is already bound to another account"


class PhoneCodeInvalid(ServiceError):
    """WeChat refused the getPhoneNumber code (unknown, expired, used, or not this user's)."""

    code = "phone_code_invalid"
    default_message = "the phone number code is invalid or expired; ask the user to tap the button again"


class PhoneUnavailable(ServiceError):
    """WeChat does not let this mini-program read phone numbers (48001: not a verified company app)."""

    code = "phone_unavailable"
    default_message = (
        "WeChat offers getPhoneNumber only to verified non-personal mini-programs; it is not enabled here"
    )


class NoSessionKey(ServiceError):
    """No session_key is stored for the user (they never logged in with wx.login here)."""

    code = "no_session_key"
    default_message = "log in with wx.login() and POST /api/mp/login first"


class DecryptFailed(ServiceError):
    """The data does not decrypt with the stored session_key (usually: wx.login ran again since)."""

    code = "decrypt_failed"
    default_message = (
        "the data could not be decrypted; call wx.login(), POST /api/mp/login, then fetch the data again"
    )


class WatermarkInvalid(ServiceError):
    """The data decrypted, but its watermark names another appid."""

    code = "watermark_invalid"
    default_message = "the data was not issued for this mini-program"


# --- OpenID Connect (the gateway's OAuth endpoints answer these codes as RFC 6749 error bodies) ------


class ClientUnknown(ServiceError):
    """The request names a client that is not registered."""

    code = "client_unknown"
    default_message = "no client with this client_id is registered"


class InvalidClient(ServiceError):
    """The token endpoint was called for a client that is not registered (OAuth ``invalid_client``)."""

    code = "invalid_client"
    default_message = "unknown client"


class OidcInvalidRequest(ServiceError):
    """An authorization request the registered client does not allow (a redirect URI not registered,
    a public client without PKCE), or a call without what it needs."""

    code = "invalid_request"
    default_message = "the request is not valid for this client"


class InvalidScope(ServiceError):
    """A scope the client may not ask for, or a request without ``openid``."""

    code = "invalid_scope"
    default_message = "the requested scope is not allowed for this client"


class InvalidGrant(ServiceError):
    """OAuth ``invalid_grant``: the code or refresh token is unknown, expired, used already, of another
    client, or its ``redirect_uri`` or PKCE verifier does not match."""

    code = "invalid_grant"
    default_message = "the authorization code or refresh token is not valid"


class LoginRequired(ServiceError):
    """No live OP session to log in from silently (unknown, ended, expired, or older than ``max_age``)."""

    code = "login_required"
    default_message = "the user must log in again"


# --- account linking (docs/linking.md) ------------------------------------------------------------


class LinkRequestNotFound(ServiceError):
    """No link request has this id or link token (or it belongs to another client: the same answer)."""

    code = "link_request_not_found"
    default_message = "no such link request"


class LinkRequestExpired(ServiceError):
    """The link request's token showed no code in time; the site opens a new request."""

    code = "link_request_expired"
    default_message = "the link request has expired: ask the site for a new one"


class LinkRequestUsed(ServiceError):
    """The link token already showed its code, in a browser (single use: only that browser may go on)."""

    code = "link_request_used"
    default_message = "this link request was already used to show a code"


class LinkClientMismatch(ServiceError):
    """The link request belongs to another client than the one the browser names."""

    code = "client_mismatch"
    default_message = "this link request was opened by another site"


class AlreadyLinked(ServiceError):
    """The WeChat user is linked to another account of this site: never moved silently (unlink first)."""

    code = "already_linked"
    default_message = "this WeChat is already linked to another account of this site"


class AccountAlreadyLinked(ServiceError):
    """The site's account is linked to another WeChat user, and the site allows only one."""

    code = "account_already_linked"
    default_message = "this account of the site is already linked to another WeChat"


class LinkNotFound(ServiceError):
    """The site's account has no link (to this WeChat user, when one was named)."""

    code = "link_not_found"
    default_message = "this account is not linked"

"""Errors of the qrcode service; the gateway maps each ``code`` to an HTTP status."""

from __future__ import annotations

from shared.errors import ServiceError


class SceneNotFound(ServiceError):
    """No such scene (never issued, or purged long after it ended)."""

    code = "scene_not_found"
    default_message = "unknown login code"


class SceneExpired(ServiceError):
    """The scene outlived its lifetime."""

    code = "scene_expired"
    default_message = "the login code has expired"


class SceneCancelled(ServiceError):
    """The phone declined this login."""

    code = "scene_cancelled"
    default_message = "the login was cancelled"


class AlreadyScanned(ServiceError):
    """Another phone already scanned this code."""

    code = "already_scanned"
    default_message = "this login code was already scanned"


class NotScanned(ServiceError):
    """Confirm before scan."""

    code = "scene_not_scanned"
    default_message = "the login code has not been scanned"


class AlreadyConfirmed(ServiceError):
    """The scene was confirmed already."""

    code = "already_confirmed"
    default_message = "the login was already confirmed"


class NotConfirmed(ServiceError):
    """Complete before the phone confirmed."""

    code = "scene_not_confirmed"
    default_message = "the login has not been confirmed yet"


class AlreadyRedeemed(ServiceError):
    """The login was already collected."""

    code = "already_redeemed"
    default_message = "the login was already completed"


class NotIdentified(ServiceError):
    """A confirm without a user for a scan whose code identified nobody (the session service then looks)."""

    code = "scene_not_identified"
    default_message = "the scan did not identify the user"


class SceneConflict(ServiceError):
    """The scene changed under the request in a way no other error describes."""

    code = "scene_state_conflict"
    default_message = "the login code changed state, read it again"


class TicketMismatch(ServiceError):
    """The caller is not the browser that asked for this scene."""

    code = "ticket_invalid"
    default_message = "this login code belongs to another browser"


class CodeUnavailable(ServiceError):
    """WeChat could not render a code right now."""

    code = "wechat_unavailable"
    default_message = "the login code could not be created, try again"


class IssueRateLimited(ServiceError):
    """All replicas together issued as many scenes as the global limit allows for now."""

    code = "rate_limited"
    default_message = "too many login codes are being issued, try again shortly"


class CodeQuotaExhausted(ServiceError):
    """The pool is empty and the shared WeChat render budget of this window is spent."""

    code = "code_quota_exhausted"
    default_message = "no login code can be rendered right now, try again shortly"


class ScanTokenMismatch(ServiceError):
    """Only the phone that scanned the code may confirm or cancel it."""

    code = "scan_token_invalid"
    default_message = "this login code was scanned by another phone"


class ClientUnknown(ServiceError):
    """A login code was asked for (or scanned) for a client that is not registered (any more)."""

    code = "client_unknown"
    default_message = "no client with this client_id is registered"


class ClientMismatch(ServiceError):
    """The login is being collected by another client than the one that started it (site B
    completing a scene of site A)."""

    code = "client_mismatch"
    default_message = "this login was started by another site"


class LoginCodeInvalid(ServiceError):
    """No stored scene has this typed login code (mistyped, or purged), or it was entered as often as
    a scene allows; expired and used codes are answered by their scene's state instead."""

    code = "login_code_invalid"
    default_message = "no login code is like this one: check it against the web page"


class CodeEntriesLimited(ServiceError):
    """This WeChat user, or everybody together (misses), entered as many login codes as the hour allows."""

    code = "rate_limited"
    default_message = "too many login codes were entered; try again later, or scan the code instead"


class LaunchSceneRefused(ServiceError):
    """The login page was opened from a share card, another mini-program or another way that cannot
    be a scan of the code on the user's own screen (security review M4: QR relay)."""

    code = "launch_scene_refused"
    default_message = "open the login page by scanning the code on the computer's screen with WeChat"


class ScenePurposeMismatch(ServiceError):
    """A link scene confirmed or collected as a login, or a login scene as a link (docs/linking.md):
    refused before anything changes, so a code shown to link an account never yields tokens."""

    code = "scene_purpose_mismatch"
    default_message = "this code was issued for something else (a login, or linking an account)"

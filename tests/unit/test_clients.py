"""The registered clients: the file, the default client, validation and reloading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.__main__ import clients_command
from shared.clients import (
    ClientRegistry,
    ClientsFileError,
    hash_secret,
    load_clients_file,
    new_secret,
    webhook_secret_problems,
)
from shared.config import Settings

SECRET, SECRET_HASH = new_secret()

YAML = f"""
clients:
  - client_id: shop
    client_secret_hash: "{SECRET_HASH}"
    site_name: 某某商城
    redirect_uris: ["https://shop.example.com/oidc/callback"]
    web_origins: ["https://shop.example.com"]
    webhooks:
      - id: main
        url: https://shop.example.com/hooks/wxlogin
        secret_envs: [SHOP_WEBHOOK_SECRET]
        events: [login.succeeded]
  - client_id: spa-app
    site_name: Single page
    redirect_uris: ["http://127.0.0.1:5173/callback"]
    subject_type: pairwise
"""


def settings(**values: object) -> Settings:
    return Settings.model_validate({"allowed_origins": ["https://legacy.example.com"], **values})


def write(tmp_path: Path, text: str, name: str = "clients.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_file_the_default_client_is_the_older_settings() -> None:
    registry = ClientRegistry.from_settings(settings(site_name="旧站点", jwt_audience="legacy-site"))
    client = registry.require(None)
    assert (client.client_id, client.site_name) == ("legacy-site", "旧站点")
    assert client.allows_origin("https://legacy.example.com")
    assert client.public and not client.redirect_uris
    assert registry.get("shop") is None


def test_a_yaml_file_registers_clients_beside_the_default(tmp_path: Path) -> None:
    registry = ClientRegistry.from_settings(settings(clients_file=str(write(tmp_path, YAML))))
    shop = registry.require("shop")
    assert shop.site_name == "某某商城" and not shop.public
    assert shop.check_secret(SECRET) and not shop.check_secret(SECRET + "x")
    assert shop.allows_redirect("https://shop.example.com/oidc/callback")
    assert not shop.allows_redirect("https://shop.example.com/oidc/callback/evil")
    assert registry.require("spa-app").public
    assert set(registry.audiences()) == {"wxlogin-site", "shop", "spa-app"}
    assert set(registry.origins()) == {"https://legacy.example.com", "https://shop.example.com"}
    assert shop.webhooks[0].wants("login.succeeded") and not shop.webhooks[0].wants("user.created")


def test_toml_works_too(tmp_path: Path) -> None:
    text = '[[clients]]\nclient_id = "blog"\nsite_name = "Blog"\nredirect_uris = ["https://blog.example/cb"]\n'
    clients = load_clients_file(write(tmp_path, text, "clients.toml"))
    assert [c.client_id for c in clients] == ["blog"]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ('{client_id: x, site_name: a}', "client_id"),
        ('{client_id: abc, site_name: a, redirect_uris: ["http://evil.example/cb"]}', "https"),
        ('{client_id: abc, site_name: a, redirect_uris: ["https://a.example/cb#frag"]}', "fragment"),
        ('{client_id: abc, site_name: a, web_origins: ["https://a.example/"]}', "exact origins"),
        ('{client_id: abc, site_name: a, client_secret_hash: plain}', "client_secret_hash"),
        ('{client_id: abc, site_name: a, scopes: [email]}', "scopes"),
        ('{client_id: abc, site_name: a, surprise: 1}', "surprise"),
        ('{client_id: abc}', "site_name"),
    ],
)
def test_an_invalid_entry_is_named_with_its_mistake(tmp_path: Path, entry: str, says: str) -> None:
    with pytest.raises(ClientsFileError) as caught:
        load_clients_file(write(tmp_path, f"clients:\n  - {entry}\n"))
    assert any(says in problem for problem in caught.value.problems), caught.value.problems


def test_a_client_declared_twice_is_refused(tmp_path: Path) -> None:
    text = "clients:\n  - {client_id: abc, site_name: a}\n  - {client_id: abc, site_name: b}\n"
    with pytest.raises(ClientsFileError, match="declared twice"):
        load_clients_file(write(tmp_path, text))


def test_reload_picks_up_a_change_and_keeps_the_last_good_clients_on_a_broken_file(tmp_path: Path) -> None:
    path = write(tmp_path, YAML)
    registry = ClientRegistry.from_settings(settings(clients_file=str(path)))
    path.write_text(
        YAML.replace("某某商城", "新商城").replace("https://shop.example.com", "https://mall.example.com"),
        encoding="utf-8",
    )
    os.utime(path, ns=(1, 1))  # a different stamp even within the file system's time resolution
    assert registry.reload()
    assert registry.require("shop").site_name == "新商城"
    # CORS and the WebSocket follow: the origins are those of the clients now loaded.
    assert set(registry.origins()) == {"https://legacy.example.com", "https://mall.example.com"}
    path.write_text("clients: [ {client_id: shop", encoding="utf-8")
    assert not registry.reload(force=True)
    assert registry.require("shop").site_name == "新商城"


def test_webhook_secrets_must_be_set_as_whsec_values(tmp_path: Path) -> None:
    registry = ClientRegistry.from_settings(settings(clients_file=str(write(tmp_path, YAML))))
    problem = "shop/main: SHOP_WEBHOOK_SECRET must hold a whsec_ secret"
    assert webhook_secret_problems(registry.all(), {}) == [problem]
    assert webhook_secret_problems(registry.all(), {"SHOP_WEBHOOK_SECRET": "whsec_abc"}) == []


def test_the_cli_lists_checks_and_makes_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = settings(clients_file=str(write(tmp_path, YAML.split("    webhooks:")[0])))
    assert clients_command("list", good) == 0
    assert "shop\tconfidential\t某某商城" in capsys.readouterr().out
    assert clients_command("check", good) == 0
    bad = settings(clients_file=str(write(tmp_path, "clients:\n  - {client_id: x}\n", "bad.yaml")))
    assert clients_command("check", bad) == 1
    assert "client x: client_id" in capsys.readouterr().err
    assert clients_command("new-secret", good) == 0
    out = capsys.readouterr().out
    secret = out.split("client_secret:")[1].split()[0]
    assert hash_secret(secret) in out


def test_pairwise_subjects_differ_per_client_and_are_stable() -> None:
    from shared.clients import Client
    from shared.subjects import preferred_username, subject

    key = bytes(range(32))
    public = Client(client_id="shop", site_name="Shop")
    a = Client(client_id="site-a", site_name="A", subject_type="pairwise")
    b = Client(client_id="site-b", site_name="B", subject_type="pairwise")
    assert subject(public, "u_1", key) == "u_1"
    assert subject(a, "u_1", key) == subject(a, "u_1", key) != subject(b, "u_1", key)
    assert subject(a, "u_1", key) != subject(a, "u_1", bytes(32))
    assert subject(a, "u_1", key).startswith("p_") and len(subject(a, "u_1", key)) == 34
    assert preferred_username(public, "u_1", key).startswith("wx_")
    assert preferred_username(a, "u_1", key) != preferred_username(b, "u_1", key)
    assert preferred_username(public, "u_1", key) != preferred_username(public, "u_2", key)

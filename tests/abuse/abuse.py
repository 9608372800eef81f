"""Abuse of a running Quorumkey cluster by one unauthenticated or
authenticated client, while an honest client keeps working.

Run by cli/tests/abuse.rs against `qk dev up` (3 nodes):
    python3 abuse.py API_URL CA_PEM RPC_PORTS(comma-separated)
with the honest client's token in QK_ABUSE_TOKEN. Prints one JSON object:
what each attack did, what the honest client saw, and "failures" (what
broke a promise). Standard library only.
"""
import base64
import http.client
import json
import os
import random
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request

API, CA, RPC_PORTS = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split(",")]
TOKEN = os.environ["QK_ABUSE_TOKEN"]
HOST, PORT = API.removeprefix("https://").split(":")
PORT = int(PORT)
CTX = ssl.create_default_context(cafile=CA)
CTX.check_hostname = False
failures = []
report = {}


def call(method, path, body=None, token=TOKEN, timeout=15):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, context=CTX, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def honest_round_trip(tag):
    """Encrypt and decrypt through the API; True when the plaintext returns."""
    plain = base64.b64encode(tag.encode()).decode()
    status, ct = call("POST", "/api/v1/keys/abuse/encrypt", {"plaintext": plain})
    if status != 200:
        return f"encrypt answered {status}: {ct}"
    status, out = call("POST", "/api/v1/decrypt", {"ciphertext": ct["ciphertext"]})
    if status != 200 or out.get("plaintext") != plain:
        return f"decrypt answered {status}: {out}"
    return None


def honest_while(attack, rounds):
    """Runs `attack` in threads while the honest client makes `rounds` round
    trips; each must succeed."""
    done = threading.Event()
    threads = [threading.Thread(target=attack, args=(done,)) for _ in range(8)]
    for t in threads:
        t.start()
    errors = []
    for i in range(rounds):
        try:
            err = honest_round_trip(f"honest {i}")
        except Exception as e:  # a timeout or a reset is a starved client
            err = f"{type(e).__name__}: {e}"
        if err:
            errors.append(err)
    done.set()
    for t in threads:
        t.join()
    return errors


def slow_headers():
    """Slowloris: many TLS connections that send a request's headers one
    byte per second; the node must close them (header timeout) and keep
    serving the honest client meanwhile."""
    conns = []
    for _ in range(100):
        raw = socket.create_connection((HOST, PORT), timeout=5)
        ctx = ssl.create_default_context(cafile=CA)
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["http/1.1"])
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"GET /api/v1/health/live HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        conns.append(tls)
    start = time.monotonic()
    closed_at = {}
    errors = []
    honest = 0
    while len(closed_at) < len(conns) and time.monotonic() - start < 40:
        for i, c in enumerate(conns):
            if i in closed_at:
                continue
            try:
                c.sendall(b"a")
            except OSError:
                closed_at[i] = time.monotonic() - start
        err = honest_round_trip(f"slow {honest}")
        honest += 1
        if err:
            errors.append(err)
        time.sleep(1)
    for c in conns:
        c.close()
    report["slow_headers"] = {
        "connections": len(conns),
        "closed_by_server": len(closed_at),
        "last_closed_after_s": round(max(closed_at.values(), default=0), 1),
        "honest_round_trips": honest,
        "honest_failures": errors,
    }
    if len(closed_at) < len(conns):
        failures.append(f"{len(conns) - len(closed_at)} slow-header connections still open after 40 s")
    if errors:
        failures.append(f"honest client failed during slow headers: {errors[:3]}")


def oversized_body():
    """A request announcing a 2 MiB body: refused with 413 before the body is
    read (sending it all would race the refusal: the node may close first)."""
    conn = http.client.HTTPSConnection(HOST, PORT, context=CTX, timeout=15)
    conn.putrequest("POST", "/api/v1/keys/abuse/encrypt")
    conn.putheader("Authorization", "Bearer " + TOKEN)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.endheaders()
    conn.send(b'{"plaintext": "')
    response = conn.getresponse()
    body = json.loads(response.read() or b"null")
    conn.close()
    report["oversized_body"] = {"status": response.status, "code": (body or {}).get("error", {}).get("code")}
    if response.status != 413:
        failures.append(f"a 2 MiB body answered {response.status}, not 413: {body}")


def health_flood():
    counts = {"requests": 0, "non_200": 0, "first_error": None}
    lock = threading.Lock()

    def flood(done):
        while not done.is_set():
            error = None
            try:
                with urllib.request.urlopen(API + "/api/v1/health/ready", context=CTX, timeout=10) as r:
                    r.read()
            except urllib.error.HTTPError as e:
                error = f"{e.code}: {e.read()[:300]!r}"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            with lock:
                counts["requests"] += 1
                if error:
                    counts["non_200"] += 1
                    counts["first_error"] = counts["first_error"] or error

    errors = honest_while(flood, 20)
    report["health_flood"] = dict(counts, honest_failures=errors)
    if counts["non_200"]:
        failures.append(f"{counts['non_200']} of {counts['requests']} readiness probes of a healthy node failed: {counts['first_error']}")
    if errors:
        failures.append(f"honest client failed during a health flood: {errors[:3]}")


def garbage_tcp():
    """Random bytes instead of a TLS handshake: the node drops the
    connection and serves on."""
    dropped = 0
    for _ in range(50):
        with socket.create_connection((HOST, PORT), timeout=5) as s:
            try:
                s.sendall(os.urandom(16 * 1024))
                s.settimeout(15)
                while s.recv(4096):
                    pass
                dropped += 1
            except OSError:
                dropped += 1
    report["garbage_tcp"] = {"connections": 50, "dropped_by_server": dropped}
    if dropped != 50:
        failures.append(f"only {dropped} of 50 garbage TCP connections were dropped")


def garbage_udp():
    """Random datagrams at every node's QUIC port (Raft and the protocol
    travel there): the cluster must not lose its leader or its data."""
    sent = 0
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(20000):
            port = RPC_PORTS[i % len(RPC_PORTS)]
            size = rng.choice([1, 20, 1200, 1350, rng.randint(1, 1452)])
            s.sendto(os.urandom(size), (HOST, port))
            sent += 1
    errors = [e for e in (honest_round_trip(f"udp {i}") for i in range(10)) if e]
    status, cluster = call("GET", "/api/v1/cluster")
    reachable = [m["node_id"] for m in (cluster or {}).get("members", []) if m.get("reachable")]
    report["garbage_udp"] = {"datagrams": sent, "reachable_members": reachable, "honest_failures": errors}
    if errors:
        failures.append(f"honest client failed after UDP garbage: {errors[:3]}")
    if len(reachable) != len(RPC_PORTS):
        failures.append(f"members reachable after UDP garbage: {reachable}")


def main():
    status, body = call("POST", "/api/v1/keys", {"name": "abuse"}, timeout=60)
    if status != 201:
        print(json.dumps({"failures": [f"cannot create the key: {status} {body}"]}))
        return
    for attack in (oversized_body, garbage_tcp, health_flood, garbage_udp, slow_headers):
        start = time.monotonic()
        attack()
        report.setdefault(attack.__name__, {})["seconds"] = round(time.monotonic() - start, 1)
    report["failures"] = failures
    print(json.dumps(report, indent=1))


main()

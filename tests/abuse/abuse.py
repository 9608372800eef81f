"""Abuse of a running Quorumkey cluster by one unauthenticated or
authenticated client, while an honest client keeps working: its decrypts
must succeed and its writes commit during every attack. Their latency is
measured (p50/p99 per attack against the idle figure) and reported, not
asserted: a timed bound would make the test flaky on a loaded machine.

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
# The attack running now, and the honest client's latencies (ms) per attack.
phase = ["idle"]
latencies = {}


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


def timed(what, method, path, body=None):
    start = time.monotonic()
    answer = call(method, path, body)
    ms = (time.monotonic() - start) * 1000
    latencies.setdefault(phase[0], {}).setdefault(what, []).append(ms)
    return answer


def honest_round_trip(tag):
    """Encrypt, decrypt and one write (a key setting) through the API; None
    when the plaintext returns and the write commits, else what failed."""
    plain = base64.b64encode(tag.encode()).decode()
    status, ct = timed("encrypt", "POST", "/api/v1/keys/abuse/encrypt", {"plaintext": plain})
    if status != 200:
        return f"encrypt answered {status}: {ct}"
    status, out = timed("decrypt", "POST", "/api/v1/decrypt", {"ciphertext": ct["ciphertext"]})
    if status != 200 or out.get("plaintext") != plain:
        return f"decrypt answered {status}: {out}"
    period = 86_400_000 + random.randrange(1_000_000)
    status, out = timed("write", "POST", "/api/v1/keys/abuse/config", {"rotation_period_ms": period})
    if status != 200:
        return f"a write answered {status}: {out}"
    return None


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def latency_table():
    """p50/p99 (ms) of the honest client's calls per attack, and each p99
    as a multiple of the idle one."""
    idle = latencies.get("idle", {})
    table = {}
    for attack, calls in latencies.items():
        row = {}
        for what, values in calls.items():
            p99 = percentile(values, 0.99)
            idle_p99 = percentile(idle.get(what, []), 0.99)
            row[what] = {
                "n": len(values),
                "p50_ms": round(percentile(values, 0.5), 1),
                "p99_ms": round(p99, 1),
                "p99_vs_idle": round(p99 / idle_p99, 1) if idle_p99 else None,
            }
        table[attack] = row
    return table


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


HEALTH_FLOOD_REQUESTS = 10_000


def health_flood():
    """10,000 unauthenticated readiness, health and metrics requests over
    eight kept-alive connections: every one answered 200, and the honest
    client served meanwhile."""
    counts = {"requests": 0, "non_200": 0, "first_error": None}
    lock = threading.Lock()
    paths = ["/api/v1/health/ready", "/metrics", "/v1/sys/health?standbyok=true"]

    def flood(done, worker):
        conn = http.client.HTTPSConnection(HOST, PORT, context=CTX, timeout=10)
        for i in range(HEALTH_FLOOD_REQUESTS // 8):
            error = None
            try:
                conn.request("GET", paths[(worker + i) % len(paths)])
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    error = f"{response.status}: {body[:300]!r}"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPSConnection(HOST, PORT, context=CTX, timeout=10)
            with lock:
                counts["requests"] += 1
                if error:
                    counts["non_200"] += 1
                    counts["first_error"] = counts["first_error"] or error
        conn.close()

    errors = honest_until_done(flood)
    report["health_flood"] = dict(counts, honest_failures=errors)
    if counts["non_200"]:
        failures.append(f"{counts['non_200']} of {counts['requests']} health and metrics requests to a healthy node failed: {counts['first_error']}")
    if counts["requests"] != HEALTH_FLOOD_REQUESTS:
        failures.append(f"the health flood sent {counts['requests']} requests, not {HEALTH_FLOOD_REQUESTS}")
    if errors:
        failures.append(f"honest client failed during a health flood: {errors[:3]}")


def honest_until_done(attack, threads=8):
    """Runs `attack(done, worker)` in threads, each ending by itself, while
    the honest client makes round trips (at least 10, and until every
    attacker thread has ended); returns the honest client's failures."""
    done = threading.Event()
    workers = [threading.Thread(target=attack, args=(done, i)) for i in range(threads)]
    for t in workers:
        t.start()
    errors = []
    rounds = 0
    while rounds < 10 or any(t.is_alive() for t in workers):
        try:
            err = honest_round_trip(f"honest {rounds}")
        except Exception as e:  # a timeout or a reset is a starved client
            err = f"{type(e).__name__}: {e}"
        if err:
            errors.append(err)
        rounds += 1
        if rounds >= 2000:
            break
    done.set()
    for t in workers:
        t.join()
    return errors


IDLE_ADDRESSES = [f"127.0.2.{i}" for i in range(1, 9)]
IDLE_PER_ADDRESS = 250


def idle_tls_many_addresses():
    """2,000 idle TLS connections from eight addresses (250 each, within
    the 256 one address may hold; 1,024 fill the listener), reopened as the
    node closes them, while the honest client connects anew for every call:
    the node closes the connection idle the longest to make room for it."""
    opened = {"connections": 0, "refused_or_closed": 0}
    lock = threading.Lock()

    def hold(done, worker):
        held = []
        ctx = ssl.create_default_context(cafile=CA)
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["http/1.1"])
        source = IDLE_ADDRESSES[worker]
        # The first 250 fill; the next 250 replace them one by one.
        for _ in range(2 * IDLE_PER_ADDRESS):
            try:
                raw = socket.create_connection((HOST, PORT), timeout=5, source_address=(source, 0))
                held.append(ctx.wrap_socket(raw, server_hostname="localhost"))
                with lock:
                    opened["connections"] += 1
            except OSError:
                with lock:
                    opened["refused_or_closed"] += 1
            if len(held) > IDLE_PER_ADDRESS:
                held.pop(0).close()
        done.wait(3)
        for c in held:
            c.close()

    errors = honest_until_done(hold, threads=len(IDLE_ADDRESSES))
    report["idle_tls_many_addresses"] = dict(opened, addresses=len(IDLE_ADDRESSES), honest_failures=errors)
    if errors:
        failures.append(f"honest client failed while idle TLS connections from many addresses filled the listener: {errors[:3]}")


def break_glass_flood():
    """A key user floods break-glass decrypts of a key whose policy puts
    decrypt under approval: at most 32 of its approvals are pending, another
    key user still gets an approval of its own, and the honest client is
    served meanwhile."""
    status, body = call("POST", "/api/v1/keys", {"name": "glass"}, timeout=60)
    if status not in (200, 201):
        failures.append(f"cannot create the break-glass key: {status} {body}")
        return
    for approver in ("ann", "bob"):
        call("POST", "/api/v1/principals", {"name": approver, "roles": ["approver"]})
    rule = {"rules": [], "approval": {"required": 2, "approvers": ["role:approver"], "permissions": ["decrypt"]}}
    status, body = call("PUT", "/api/v1/keys/glass/policy", rule)
    if status != 200:
        failures.append(f"cannot set the break-glass policy: {status} {body}")
        return
    tokens = {}
    for name in ("mallory", "kim"):
        call("POST", "/api/v1/principals", {"name": name, "roles": ["key-user"]})
        status, body = call("POST", "/api/v1/tokens", {"principal": name, "ttl_ms": 3_600_000})
        if status != 201:
            failures.append(f"cannot issue a token for {name}: {status} {body}")
            return
        tokens[name] = body["token"]
    status, ct = call("POST", "/api/v1/keys/glass/encrypt", {"plaintext": "Z2xhc3M="}, token=tokens["mallory"])
    if status != 200:
        failures.append(f"cannot encrypt under the break-glass key: {status} {ct}")
        return
    answers = {}
    lock = threading.Lock()

    def flood(done, worker):
        for _ in range(25):
            try:
                status, _ = call("POST", "/api/v1/decrypt", {"ciphertext": ct["ciphertext"]}, token=tokens["mallory"])
            except Exception as e:  # counted, not fatal to the thread
                status = type(e).__name__
            with lock:
                answers[status] = answers.get(status, 0) + 1

    errors = honest_until_done(flood)
    status, listed = call("GET", "/api/v1/approvals")
    pending = [a for a in (listed or {}).get("approvals", []) if a.get("requester") == "mallory" and a.get("status") == "pending"]
    status_kim, body_kim = call("POST", "/api/v1/decrypt", {"ciphertext": ct["ciphertext"]}, token=tokens["kim"])
    kim_waits = status_kim == 202 and (body_kim or {}).get("approval", {}).get("requester") == "kim"
    report["break_glass_flood"] = {
        "requests": sum(answers.values()),
        "answers": {str(k): v for k, v in sorted(answers.items())},
        "flooder_pending_approvals": len(pending),
        "another_user_gets_an_approval": kim_waits,
        "honest_failures": errors,
    }
    if len(pending) > 32:
        failures.append(f"one principal has {len(pending)} approvals pending, over 32")
    if not kim_waits:
        failures.append(f"another key user got no approval of its own after the flood: {status_kim} {body_kim}")
    if errors:
        failures.append(f"honest client failed during a break-glass flood: {errors[:3]}")


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
    for i in range(50):
        err = honest_round_trip(f"idle {i}")
        if err:
            failures.append(f"honest client failed with no attack: {err}")
            break
    attacks = (oversized_body, garbage_tcp, health_flood, garbage_udp, idle_tls_many_addresses, break_glass_flood, slow_headers)
    for attack in attacks:
        phase[0] = attack.__name__
        start = time.monotonic()
        attack()
        report.setdefault(attack.__name__, {})["seconds"] = round(time.monotonic() - start, 1)
    report["honest_latency"] = latency_table()
    report["failures"] = failures
    print(json.dumps(report, indent=1))


main()

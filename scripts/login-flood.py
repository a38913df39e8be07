#!/usr/bin/env python3
# A flood of new wrong passwords from 127.0.0.1 (200 connections, alice),
# and after 3 s the first logins of user1..user8 (password passN) from
# 127.0.0.2..9, each retried every 0.2 s for up to BUDGET seconds: how
# long each took. Needs a ferry on 127.0.0.1:PORT with an htpasswd file
# holding alice and user1..user8 (bcrypt, e.g. htpasswd -B -C 10).
# Usage: scripts/login-flood.py PORT [BUDGET]
import base64, http.client, sys, threading, time, socket
port = int(sys.argv[1])
stop = threading.Event()
sent = [0]
def flooder(n):
    i = 0
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.1", 0))
            while not stop.is_set():
                i += 1
                tok = base64.b64encode(f"alice:wrong-{n}-{i}".encode()).decode()
                c.request("GET", "/v2/", headers={"Authorization": "Basic " + tok})
                r = c.getresponse(); r.read(); sent[0] += 1
        except Exception:
            time.sleep(0.01)
threads = [threading.Thread(target=flooder, args=(n,), daemon=True) for n in range(200)]
for t in threads: t.start()
time.sleep(3)
results = []
for u in range(1, 9):
    src = f"127.0.0.{u + 1}"
    tok = base64.b64encode(f"user{u}:pass{u}".encode()).decode()
    t0 = time.time(); tries = 0; status = None
    while time.time() - t0 < float(sys.argv[2]) if len(sys.argv) > 2 else 30:
        tries += 1
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(src, 0))
        c.request("GET", "/v2/", headers={"Authorization": "Basic " + tok})
        r = c.getresponse(); r.read(); status = r.status
        if status == 200: break
        time.sleep(0.2)
    results.append((u, status, tries, time.time() - t0))
stop.set()
for u, s, tries, dt in results:
    print(f"user{u} from 127.0.0.{u+1}: {s} after {tries} tries, {dt*1000:.0f} ms")
print("max", max(r[3] for r in results) * 1000, "ms; all 200:", all(r[1] == 200 for r in results))

#!/usr/bin/env python3
"""tools/device/loadgen.py - load generator for OpenAI-compatible servers (pinfer, llama-server).

C clients at once, each sending R streamed /v1/completions requests one after another (a prompt of
about P tokens, exactly N generated tokens: ignore_eos, which both servers take). Measures per request
the time to the first generated text (TTFT) and in all the aggregate decode throughput: generated
tokens over the wall time of the whole run. Prints one markdown row:

    | server | concurrency | requests | tok/s | ttft p50 ms | ttft p99 ms | errors |

Standard library only (threads and http.client), so it runs on any machine with Python 3.
usage: loadgen.py NAME HOST:PORT CONCURRENCY REQUESTS_PER_CLIENT N_PREDICT [PROMPT_WORDS]
"""
import http.client
import json
import sys
import threading
import time

WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing in the old "
         "garden near the river and children play beside tall green trees under a bright sky").split()


def one(host, port, prompt, n_predict, out):
    t0 = time.monotonic()
    ttft = None
    toks = 0
    try:
        c = http.client.HTTPConnection(host, port, timeout=600)
        body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": n_predict, "temperature": 0,
                           "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}})
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            out.append((None, 0, "status %d: %s" % (r.status, r.read()[:200])))
            return
        usage = None
        chunks = 0
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if "error" in ev:
                out.append((None, 0, str(ev["error"])[:200]))
                return
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices", []):
                if ch.get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.monotonic() - t0
        toks = usage["completion_tokens"] if usage and usage.get("completion_tokens") else chunks
        out.append((ttft, toks, None))
    except Exception as e:  # a refused or dropped connection counts as an error, the run goes on
        out.append((None, 0, repr(e)[:200]))


def main():
    name, addr, conc, reqs, n_pred = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    words = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    host, port = addr.rsplit(":", 1)
    port = int(port)
    results = []
    lock = threading.Lock()

    def client(k):
        for i in range(reqs):
            start = (k * 7 + i * 3) % len(WORDS)
            prompt = " ".join((WORDS * 8)[start:start + words])
            out = []
            one(host, port, prompt, n_pred, out)
            with lock:
                results.extend(out)

    t0 = time.monotonic()
    th = [threading.Thread(target=client, args=(k,)) for k in range(conc)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.monotonic() - t0
    ok = [r for r in results if r[2] is None and r[0] is not None]
    errs = [r[2] for r in results if r[2] is not None]
    ttfts = sorted(r[0] for r in ok)
    toks = sum(r[1] for r in ok)

    def pct(p):
        if not ttfts:
            return float("nan")
        return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))] * 1e3

    print("| %s | %d | %d | %.1f | %.0f | %.0f | %d |" % (name, conc, len(results), toks / wall if wall > 0 else 0,
                                                        pct(0.5), pct(0.99), len(errs)))
    for e in errs[:3]:
        print("# error: %s" % e)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""`waypoint serve` against the peers its users run: the official `openai` Python client, a real
Prometheus server that scrapes `/metrics`, and a KV-event subscriber (pyzmq + msgspec, vLLM's
event types) that indexes the replica's cache as a prefix-cache-aware router does.

Usage: python3 tests/peers/check_peers.py --waypoint PATH/TO/waypoint
Needs: `pip install openai pyzmq msgspec`, and the `prometheus` binary (Debian package
`prometheus`).
"""

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

import kv_events

API_KEY = "peer-test-key"
WAYPOINT = None
SERVER = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port}")


class Server:
    """`waypoint serve` on a port the kernel picks; its address is read from its stderr, as are
    the lines before it."""

    def __init__(self, args=("--api-key", API_KEY, "--max-model-len", "512",
                             "--enable-request-timings")):
        self.process = subprocess.Popen(
            [WAYPOINT, "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.startup = []
        for line in self.process.stderr:
            sys.stderr.write(line)
            self.startup.append(line)
            if line.startswith("waypoint: serving "):
                self.base = next(w for w in line.split() if w.startswith("http://"))
                break
        else:
            raise RuntimeError(f"waypoint serve exited with {self.process.wait()}")
        self.port = int(self.base.rsplit(":", 1)[1])
        self.forwarder = threading.Thread(target=self.forward_stderr, daemon=True)
        self.forwarder.start()

    def forward_stderr(self):
        for line in self.process.stderr:
            sys.stderr.write(line)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        # The forwarder ends at the pipe's end of file; then the pipe can be closed.
        self.forwarder.join(timeout=30)
        self.process.stderr.close()


def client(key=API_KEY):
    return openai.OpenAI(base_url=SERVER.base + "/v1", api_key=key, max_retries=0)


class OpenAIClient(unittest.TestCase):
    def test_models_lists_the_served_model(self):
        self.assertEqual([m.id for m in client().models.list().data], ["tiny"])

    def test_completion_counts_its_tokens(self):
        prompt = "The scheduler hands out blocks"
        reply = client().completions.create(model="tiny", prompt=prompt, max_tokens=8,
                                            temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(reply.object, "text_completion")
        self.assertEqual(reply.choices[0].finish_reason, "length")
        self.assertEqual(reply.usage.prompt_tokens, len(prompt.encode()))
        self.assertEqual(reply.usage.completion_tokens, 8)
        self.assertEqual(reply.usage.total_tokens, len(prompt.encode()) + 8)

    def test_streamed_completion_equals_the_whole_one_and_ends_with_usage(self):
        args = dict(model="tiny", prompt="Paged attention", max_tokens=12, temperature=0)
        whole = client().completions.create(**args).choices[0].text
        chunks = list(client().completions.create(
            stream=True, stream_options={"include_usage": True}, **args))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(text, whole)
        self.assertEqual([c.choices[0].finish_reason for c in chunks if c.choices][-1], "length")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)

    def test_chat_streaming_and_not(self):
        args = dict(model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "What is a KV cache?"}],
                    max_tokens=10, temperature=0)
        whole = client().chat.completions.create(**args)
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.choices[0].message.role, "assistant")
        self.assertEqual(whole.usage.completion_tokens, 10)
        chunks = list(client().chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **args))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_stop_strings_cut_the_output(self):
        args = dict(model="tiny", prompt="Stop strings", max_tokens=24, temperature=0)
        text = client().completions.create(**args).choices[0].text
        start = next(i for i in range(2, len(text) - 1)
                     if "\ufffd" not in text[i:i + 2])
        stop = text[start:start + 2]
        for stream in (False, True):
            if stream:
                chunks = list(client().completions.create(stop=[stop], stream=True, **args))
                cut = "".join(c.choices[0].text for c in chunks)
                reason = chunks[-1].choices[0].finish_reason
            else:
                reply = client().completions.create(stop=[stop], **args)
                cut, reason = reply.choices[0].text, reply.choices[0].finish_reason
            self.assertEqual(cut, text[:text.index(stop)])
            self.assertEqual(reason, "stop")

    def test_seeded_sampling_is_reproducible(self):
        args = dict(model="tiny", prompt="Seeds", max_tokens=10, temperature=0.9, top_p=0.9,
                    seed=7)
        first = client().completions.create(**args).choices[0].text
        self.assertEqual(client().completions.create(**args).choices[0].text, first)

    def test_timings_ride_along_without_upsetting_the_client(self):
        args = dict(model="tiny", max_tokens=4, extra_body={"return_timings": True})
        reply = client().completions.create(prompt="time me", **args)
        self.assertEqual(reply.usage.completion_tokens, reply.model_extra["timings"]["generated_tokens"])
        chat = client().chat.completions.create(
            messages=[{"role": "user", "content": "time me"}], **args)
        self.assertIn("ttft_ms", chat.model_extra["timings"])
        chunks = list(client().chat.completions.create(
            messages=[{"role": "user", "content": "time me"}], stream=True, **args))
        last = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(len(last), 1)
        self.assertIn("e2e_ms", last[0].model_extra["timings"])

    def test_errors_arrive_as_the_client_expects(self):
        with self.assertRaises(openai.NotFoundError):
            client().completions.create(model="other", prompt="x")
        with self.assertRaises(openai.AuthenticationError):
            client(key="wrong").completions.create(model="tiny", prompt="x")
        with self.assertRaises(openai.BadRequestError) as raised:
            client().completions.create(model="tiny", prompt="x" * 600)
        self.assertIn("maximum context length", str(raised.exception))
        with self.assertRaises(openai.BadRequestError):
            client().completions.create(model="tiny", prompt="x", n=2)


ADMIN_KEY = "peer-admin-key"
KV_EVENTS = {"enable_kv_cache_events": True, "publisher": "zmq",
             "endpoint": "tcp://127.0.0.1:*", "replay_endpoint": "tcp://127.0.0.1:*",
             "topic": "kv-events"}


class KvEventSubscriber(unittest.TestCase):
    """A shared-prefix workload on a cache small enough to evict: the subscriber's index, rebuilt
    from the published events (with the missed start fetched through the replay socket), must
    equal the scheduler's own prefix cache."""

    def test_the_subscribers_index_equals_the_schedulers_cache(self):
        server = Server(("--admin-api-key", ADMIN_KEY, "--num-blocks", "96",
                         "--max-model-len", "512", "--kv-events-config", json.dumps(KV_EVENTS)))
        try:
            line = next(l for l in server.startup if l.startswith("waypoint: KV events on "))
            endpoints = [w.rstrip(",\n") for w in line.split() if w.startswith("tcp://")]
            subscriber = kv_events.Subscriber(endpoints[0], endpoints[1], "kv-events")
            try:
                self.run_workload(server)
                published = self.wait_until_quiet(subscriber)
                replayed = dict(subscriber.replay(0))
                self.assertEqual(sorted(replayed), list(range(len(replayed))),
                                 "sequence numbers run from 0 without a gap")
                for sequence in subscriber.live:
                    self.assertEqual(published[sequence], replayed[sequence],
                                     "a replayed batch is the published one")
                index = kv_events.ResidentBlocks()
                for sequence in sorted(replayed):
                    batch = kv_events.DECODER.decode(replayed[sequence])
                    self.assertEqual(batch.data_parallel_rank, 0)
                    index.apply(batch)
                cache = self.schedulers_cache(server)
                self.assertEqual(index.blocks, cache, "the index equals the scheduler's cache")
                self.assertGreater(index.removed, 0, "the workload evicted blocks")
                # One prompt prefix under two salts: each salt caches its own first block.
                by_salt = collections.defaultdict(set)
                for salt, block in index.salted_first_blocks:
                    by_salt[salt].add(block)
                self.assertEqual(sorted(by_salt), [("tenant-a",), ("tenant-b",)])
                self.assertEqual([len(blocks) for blocks in by_salt.values()], [1, 1])
                self.assertNotEqual(by_salt[("tenant-a",)], by_salt[("tenant-b",)])
            finally:
                subscriber.close()
        finally:
            server.stop()

    def run_workload(self, server):
        api = openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0)
        prefixes = [f"System prompt {g}: " + "you are a careful scheduler. " * 8
                    for g in range(4)]

        def complete(n):
            # The first four share one prefix under two salts; the rest go unsalted.
            salt = {"cache_salt": "tenant-a" if n % 2 else "tenant-b"} if n < 4 else {}
            prefix = prefixes[0 if n < 4 else n % 4]
            reply = api.completions.create(
                model="tiny", prompt=prefix + f"question {n}", max_tokens=24,
                temperature=0, extra_body={"ignore_eos": True, **salt})
            self.assertEqual(reply.usage.completion_tokens, 24)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(complete, range(24)))

    def wait_until_quiet(self, subscriber, quiet_s=1.0, limit_s=30):
        deadline = time.time() + limit_s
        count, since = subscriber.count(), time.time()
        while time.time() < deadline:
            time.sleep(0.1)
            if subscriber.count() != count:
                count, since = subscriber.count(), time.time()
            elif time.time() - since >= quiet_s:
                with subscriber.lock:
                    return dict(subscriber.payloads)
        self.fail("KV events never stopped")

    def schedulers_cache(self, server):
        request = urllib.request.Request(server.base + "/admin/kv-cache",
                                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = json.load(reply)
        self.assertEqual(body["block_size"], 16)
        return collections.Counter(b["block_hash"] for b in body["cached_blocks"])


def wait_until_ready(prometheus, deadline):
    """Prometheus listens before its storage is ready and answers 503 until then."""
    while True:
        try:
            with urllib.request.urlopen(f"{prometheus}/-/ready", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.time() > deadline:
            raise AssertionError("Prometheus did not become ready")
        time.sleep(0.5)


def query(prometheus, expression):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)["data"]["result"]


# Every PromQL expression of vLLM's fleet dashboard
# (examples/online_serving/prometheus_grafana/k8s-monitoring/grafana-dashboard.json in
# vllm-project/vllm), with its Grafana variables set: $model_name to the served model and
# $__rate_interval to a minute.
FLEET_DASHBOARD = [
    'sum(vllm:num_requests_running{model_name=~"$model_name"})',
    'sum(vllm:num_requests_waiting{model_name=~"$model_name"})',
    'sum(rate(vllm:request_success{model_name=~"$model_name"}[$__rate_interval])) or sum(rate(vllm:request_success_total{model_name=~"$model_name"}[$__rate_interval]))',
    'sum(rate(vllm:generation_tokens{model_name=~"$model_name"}[$__rate_interval])) or sum(rate(vllm:generation_tokens_total{model_name=~"$model_name"}[$__rate_interval]))',
    'avg(vllm:kv_cache_usage_perc{model_name=~"$model_name"}) or avg(vllm:gpu_cache_usage_perc{model_name=~"$model_name"})',
    'count(up{job=~".*vllm.*"} == 1)',
    *[f'histogram_quantile({q}, sum by(le) (rate(vllm:{m}_bucket{{model_name=~"$model_name"}}[$__rate_interval])))'
      for m in ("e2e_request_latency_seconds", "time_to_first_token_seconds",
                "inter_token_latency_seconds")
      for q in ("0.99", "0.95", "0.90", "0.50")],
    *[f'sum(rate(vllm:{m}_sum{{model_name=~"$model_name"}}[$__rate_interval])) / sum(rate(vllm:{m}_count{{model_name=~"$model_name"}}[$__rate_interval]))'
      for m in ("e2e_request_latency_seconds", "time_to_first_token_seconds",
                "inter_token_latency_seconds")],
    'sum(rate(vllm:prompt_tokens{model_name=~"$model_name"}[$__rate_interval])) or sum(rate(vllm:prompt_tokens_total{model_name=~"$model_name"}[$__rate_interval]))',
    'sum by(finished_reason) (rate(vllm:request_success{model_name=~"$model_name"}[$__rate_interval])) or sum by(finished_reason) (rate(vllm:request_success_total{model_name=~"$model_name"}[$__rate_interval]))',
    *[f'histogram_quantile(0.95, sum by(le) (rate(vllm:request_{phase}_time_seconds_bucket{{model_name=~"$model_name"}}[$__rate_interval])))'
      for phase in ("queue", "prefill", "decode")],
    'vllm:num_requests_running{model_name=~"$model_name"}',
    'vllm:num_requests_waiting{model_name=~"$model_name"}',
    'vllm:kv_cache_usage_perc{model_name=~"$model_name"} or vllm:gpu_cache_usage_perc{model_name=~"$model_name"}',
    'sum by(le) (increase(vllm:request_prompt_tokens_bucket{model_name=~"$model_name"}[$__rate_interval]))',
    'sum by(le) (increase(vllm:request_generation_tokens_bucket{model_name=~"$model_name"}[$__rate_interval]))',
    'sum(rate(vllm:prefix_cache_hits{model_name=~"$model_name"}[$__rate_interval])) / sum(rate(vllm:prefix_cache_queries{model_name=~"$model_name"}[$__rate_interval]))',
    'sum(rate(vllm:num_preemptions{model_name=~"$model_name"}[$__rate_interval])) or sum(rate(vllm:num_preemptions_total{model_name=~"$model_name"}[$__rate_interval]))',
    'sum by(le) (increase(vllm:iteration_tokens_total_bucket{model_name=~"$model_name"}[$__rate_interval]))',
    'histogram_quantile(0.99, sum by(le, pod) (rate(vllm:e2e_request_latency_seconds_bucket{model_name=~"$model_name"}[$__rate_interval])))',
]

# The dashboard's hit-rate panel names the counters without `_total`, but vLLM's counters (like
# ours) expose only `..._total` samples, so this panel is empty against vLLM itself; its
# `_total` form is checked instead.
COUNTER_WITHOUT_TOTAL = (
    'sum(rate(vllm:prefix_cache_hits{model_name=~"$model_name"}[$__rate_interval])) / '
    'sum(rate(vllm:prefix_cache_queries{model_name=~"$model_name"}[$__rate_interval]))')
assert COUNTER_WITHOUT_TOTAL in FLEET_DASHBOARD


class PrometheusScrape(unittest.TestCase):
    def test_prometheus_answers_every_query_of_vllms_fleet_dashboard(self):
        binary = shutil.which("prometheus")
        self.assertIsNotNone(binary, "install Prometheus (Debian package `prometheus`)")
        port = free_port()
        with tempfile.TemporaryDirectory() as work:
            config = os.path.join(work, "prometheus.yml")
            with open(config, "w") as f:
                f.write(
                    "global:\n  scrape_interval: 1s\n"
                    "scrape_configs:\n  - job_name: waypoint-vllm\n"
                    f"    static_configs:\n      - targets: ['127.0.0.1:{SERVER.port}']\n")
            process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={work}/data",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for_port(port, process)
                prometheus = f"http://127.0.0.1:{port}"
                deadline = time.time() + 60
                wait_until_ready(prometheus, deadline)
                # Load across several scrapes, so rates and increases have two points; the
                # same prompt each time, so the prefix cache has hits to count.
                for _ in range(4):
                    for _ in range(3):
                        client().completions.create(model="tiny", prompt="scrape me, again",
                                                    max_tokens=4)
                    time.sleep(1.5)
                time.sleep(2)
                buckets = query(prometheus, "vllm:time_to_first_token_seconds_bucket")
                bounds = {b["metric"]["le"] for b in buckets}
                self.assertTrue({"0.001", "2560.0", "+Inf"} <= bounds, bounds)
                empty = []
                for expression in FLEET_DASHBOARD:
                    if expression == COUNTER_WITHOUT_TOTAL:
                        expression = (expression.replace("_hits{", "_hits_total{")
                                      .replace("_queries{", "_queries_total{"))
                    promql = (expression.replace("$model_name", "tiny")
                              .replace("$__rate_interval", "1m"))
                    result = query(prometheus, promql)
                    if not result:
                        empty.append(promql)
                self.assertEqual(empty, [], "dashboard queries without data")
                # What the Gateway API Inference Extension's model-server protocol reads.
                info = query(prometheus, 'vllm:cache_config_info{model_name="tiny"}')
                self.assertTrue(info, "no vllm:cache_config_info")
                self.assertEqual(info[0]["metric"]["block_size"], "16")
                self.assertTrue(int(info[0]["metric"]["num_gpu_blocks"]) > 0)
            finally:
                process.terminate()
                process.wait(timeout=30)


def main():
    global WAYPOINT, SERVER
    parser = argparse.ArgumentParser()
    parser.add_argument("--waypoint", required=True)
    args, rest = parser.parse_known_args()
    WAYPOINT = args.waypoint
    SERVER = Server()
    try:
        program = unittest.main(argv=[sys.argv[0], "-v"] + rest, exit=False)
    finally:
        SERVER.stop()
    sys.exit(0 if program.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()

"""The traffic generator counts every request, failure and retry it sees (a local HTTP server)."""

import json
import threading
import time

from modelchain.serving.traffic import TrafficGenerator, prompts_from_split

from ..local_http import LocalHttpServer


class ChatServer(LocalHttpServer):
    """Answers chat completions; every `fail_every`-th request gets a 503."""

    def __init__(self, fail_every=0):
        self.fail_every, self.count, self.bodies = fail_every, 0, []
        self.lock = threading.Lock()
        super().__init__()

    def respond(self, method, body):
        with self.lock:
            self.bodies.append(json.loads(body))
            self.count += 1
            n = self.count
        failing = self.fail_every and n % self.fail_every == 0
        answer = b'{"error": "overloaded"}' if failing else b'{"choices": [{"message": {"content": "billing"}}]}'
        # like nginx after a retry: both upstreams, the answering one last
        return 503 if failing else 200, {"X-Served-By": "127.0.0.1:1, 127.0.0.1:2" if n % 2 else "127.0.0.1:2"}, answer


def test_counts_requests_failures_and_retries():
    server = ChatServer(fail_every=4)
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    traffic = TrafficGenerator(server.url, "modelchain", prompts, concurrency=2, max_tokens=4)
    with traffic:
        deadline = time.monotonic() + 10
        while server.count < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = traffic.stats.summary()
    server.close()
    assert summary["requests"] == server.count >= 20
    assert summary["failed"] == server.count // 4 and summary["ok"] == server.count - server.count // 4
    assert summary["failures"][0]["status"] == 503
    assert summary["retried"] == (server.count + 1) // 2
    assert summary["served_by"]["127.0.0.1:2"] == server.count  # the side that answered
    # two client threads: which prompt reaches the server first is a race, the body is not
    expected = [{"model": "modelchain", "messages": p, "max_tokens": 4, "temperature": 0.0} for p in prompts]
    assert all(body in expected for body in server.bodies)
    assert {body["messages"][0]["content"] for body in server.bodies} == {"a", "b"}


def test_prompts_come_from_the_split_messages(tmp_path):
    split = tmp_path / "val.jsonl"
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": "a"}]} for i in range(3)]
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = prompts_from_split(split)
    assert len(prompts) == 3 and prompts[1][-1] == {"role": "user", "content": "q1"}  # the answer left out
    split.write_text("")
    try:
        prompts_from_split(split)
    except ValueError as exc:
        assert str(split) in str(exc)
    else:
        raise AssertionError("an empty split must be refused")

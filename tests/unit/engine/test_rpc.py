"""engine/rpc.py without llama.cpp: the handshake probe against fake TCP servers (healthy, down, busy or frozen,
another protocol), the settings it parses, the rule that only HERD_RPC_SERVERS may be named, the status codes of
its errors, the runner's last words reaching every request, and the scheduler giving a worker to one model."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from herd.api.errors import status_of
from herd.engine import rpc
from herd.engine.protocol import LoadSpec, RunnerFatal
from herd.engine.runner import ProcessRunner, _Inbox
from herd.errors import InvalidRequest, RpcWorkerFailed, RpcWorkerTimeout, RunnerFailed
from herd.options import load_options, merge
from herd.registry.modelfile import parse_modelfile
from tests.unit.scheduler.test_scheduler import Clock, FakeRunner, make, ref

pytestmark = pytest.mark.timeout(60)


def _answer(major: int = rpc.PROTO_MAJOR, minor: int = rpc.PROTO_MINOR, size: int = rpc.HELLO_REPLY_SIZE) -> bytes:
    return struct.pack("<Q4B", size, major, minor, 0, 0) + bytes(rpc.CONN_CAPS)


class FakeWorker:
    """A listening socket on a free loopback port whose client handler is `serve(conn)`, one client at a time like
    llama.cpp's; `serve=None` never accepts (the kernel still completes the TCP handshake, as for a frozen one)."""

    def __init__(self, serve: Callable[[socket.socket], None] | None) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.hellos: list[bytes] = []
        self._serve = serve
        self._stop = threading.Event()
        if serve is not None:
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                assert self._serve is not None
                self._serve(conn)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def hello_then(reply: bytes | None) -> Callable[[socket.socket], None]:
    def serve(conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while len(data) < len(rpc.HELLO_REQUEST):
                chunk = conn.recv(64)
                if not chunk:
                    return
                data += chunk
            assert data == rpc.HELLO_REQUEST
            if reply is not None:
                conn.sendall(reply)
            conn.recv(1)  # like llama.cpp, wait for the next command (the probe hangs up instead)
        except OSError:
            pass

    return serve


@pytest.fixture()
def workers() -> Iterator[list[FakeWorker]]:
    made: list[FakeWorker] = []
    yield made
    for w in made:
        w.close()


def test_a_healthy_worker_answers_the_hello(workers: list[FakeWorker]) -> None:
    w = FakeWorker(hello_then(_answer()))
    workers.append(w)
    p = rpc.probe(w.endpoint, 2.0)
    assert p.state is rpc.State.HEALTHY and p.seconds < 1.0
    assert rpc.check_workers([w.endpoint, w.endpoint], 2.0)[0].state is rpc.State.HEALTHY  # one client at a time


def test_a_closed_port_is_down_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: refused
        p = rpc.probe(endpoint, 2.0)
    assert p.state is rpc.State.DOWN and p.seconds < 1.0 and "refused" in p.detail
    with pytest.raises(RpcWorkerFailed) as err:
        rpc.check_workers([endpoint], 2.0)
    assert endpoint in err.value.message and "down" in err.value.message
    assert not isinstance(err.value, RpcWorkerTimeout) and status_of(err.value) == 502


@pytest.mark.parametrize("serve", [None, hello_then(None)], ids=["never-accepts", "accepts-never-answers"])
def test_busy_or_frozen_is_no_answer_within_the_timeout(workers: list[FakeWorker], serve: object) -> None:
    w = FakeWorker(serve)  # type: ignore[arg-type]
    workers.append(w)
    t0 = time.monotonic()
    p = rpc.probe(w.endpoint, 0.5)
    assert p.state is rpc.State.NO_ANSWER and 0.4 < time.monotonic() - t0 < 2.0
    with pytest.raises(RpcWorkerTimeout) as err:
        rpc.check_workers([w.endpoint], 0.5)
    assert w.endpoint in err.value.message and "busy" in err.value.message and status_of(err.value) == 504


def test_workers_are_probed_at_once_not_one_after_another(workers: list[FakeWorker]) -> None:
    silent = [FakeWorker(None) for _ in range(3)]
    workers.extend(silent)
    t0 = time.monotonic()
    with pytest.raises(RpcWorkerTimeout) as err:
        rpc.check_workers([w.endpoint for w in silent], 0.5)
    assert time.monotonic() - t0 < 1.4
    assert silent[0].endpoint in err.value.message  # the first in the order given


@pytest.mark.parametrize(
    "reply", [_answer(major=3), _answer(minor=9), _answer(size=4)[:12] + bytes(24)], ids=["major", "minor", "size"]
)
def test_another_protocol_version_is_named(workers: list[FakeWorker], reply: bytes) -> None:
    w = FakeWorker(hello_then(reply))
    workers.append(w)
    p = rpc.probe(w.endpoint, 2.0)
    assert p.state is rpc.State.FOREIGN
    with pytest.raises(RpcWorkerFailed, match="not a matching llama.cpp RPC server"):
        rpc.check_workers([w.endpoint], 2.0)


def test_a_worker_that_hangs_up_is_foreign(workers: list[FakeWorker]) -> None:
    w = FakeWorker(lambda conn: conn.close())
    workers.append(w)
    assert rpc.probe(w.endpoint, 2.0).state is rpc.State.FOREIGN


def test_an_unresolvable_host_is_down() -> None:
    assert rpc.probe("no-such-host.invalid:50052", 2.0).state is rpc.State.DOWN


def test_refusing_names_only_the_dead(workers: list[FakeWorker]) -> None:
    alive = FakeWorker(None)
    workers.append(alive)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        assert rpc.refusing([alive.endpoint, dead]) == [dead]


def test_settings_parse_and_refuse_bad_entries() -> None:
    assert rpc.parse_servers(" 10.0.0.2:50052, Box:1 ,10.0.0.2:50052") == ("10.0.0.2:50052", "box:1")
    assert rpc.parse_servers("none") == () and rpc.parse_servers(["a:1", "b:2"]) == ("a:1", "b:2")
    for bad in ("10.0.0.2", "a:0", "a:70000", ":1", "::1:5", "a:b"):
        with pytest.raises(ValueError):
            rpc.parse_servers(bad)
    assert rpc.parse_tensor_split("3, 1") == (3.0, 1.0) and rpc.parse_tensor_split([1, 0]) == (1.0, 0.0)
    for bad in ("a,b", "-1,2", "0,0", ",".join(["1"] * 17)):
        with pytest.raises(ValueError):
            rpc.parse_tensor_split(bad)


def test_modelfile_and_options_carry_the_workers() -> None:
    mf = parse_modelfile("FROM x\nPARAMETER rpc_servers 10.0.0.2:50052, 10.0.0.3:50052\nPARAMETER tensor_split 3,1\n")
    assert dict(mf.parameters) == {"rpc_servers": "10.0.0.2:50052,10.0.0.3:50052", "tensor_split": "3,1"}
    from herd.options import Limits

    limits = Limits(2048, 8192, 1000, 2)
    lo = load_options(merge(mf.parameter_dict(), {}), 2048, limits)
    assert lo.rpc_servers == ("10.0.0.2:50052", "10.0.0.3:50052") and lo.tensor_split == (3.0, 1.0)
    assert load_options(merge({}, {}), 2048, limits).rpc_servers is None  # not given: HERD_RPC_SERVERS
    assert load_options(merge({"rpc_servers": "none"}, {}), 2048, limits).rpc_servers == ()
    with pytest.raises(InvalidRequest, match="rpc_servers"):
        parse_modelfile("FROM x\nPARAMETER rpc_servers 10.0.0.2\n")
    with pytest.raises(InvalidRequest, match="tensor_split"):
        merge({}, {"tensor_split": 3})


def test_only_the_operators_workers_may_be_named() -> None:
    allowed = ("10.0.0.2:50052", "10.0.0.3:50052")
    assert rpc.choose_workers(None, allowed) == allowed
    assert rpc.choose_workers(("10.0.0.3:50052",), allowed) == ("10.0.0.3:50052",)
    assert rpc.choose_workers((), allowed) == ()
    with pytest.raises(InvalidRequest, match=r"203\.0\.113\.9:1.*HERD_RPC_SERVERS"):
        rpc.choose_workers(("203.0.113.9:1",), allowed)


def test_the_runners_last_words_reach_every_request_in_flight() -> None:
    async def main() -> list[object]:
        spec = LoadSpec("/m/a", 512, 512, 2, 1, True, rpc_servers=("127.0.0.1:5",))
        runner = ProcessRunner(spec)
        inboxes = [_Inbox(), _Inbox()]
        runner._queues = {1: inboxes[0], 2: inboxes[1]}
        runner._dispatch([RunnerFatal("RPC worker 127.0.0.1:5 is gone (connection refused)", "rpc_failed")])
        runner._on_death()
        return [await q.get() for q in inboxes]

    errors = asyncio.run(main())
    assert all(isinstance(e, RpcWorkerFailed) and "127.0.0.1:5" in e.message for e in errors)


def test_a_runner_dead_without_last_words_still_names_its_workers() -> None:
    runner = ProcessRunner(LoadSpec("/m/a", 512, 512, 2, 1, True, rpc_servers=("127.0.0.1:5", "127.0.0.1:6")))
    inbox = _Inbox()
    runner._queues = {1: inbox}
    runner._on_death()
    err = inbox.items[0]
    assert isinstance(err, RunnerFailed) and "127.0.0.1:5, 127.0.0.1:6" in err.message


def test_a_worker_serves_one_loaded_model_at_a_time() -> None:
    def spec(path: str, workers: tuple[str, ...]) -> LoadSpec:
        return LoadSpec(path, 512, 512, 2, 1, True, rpc_servers=workers)

    async def main() -> None:
        FakeRunner.started.clear()
        s = make(Clock(), max_loaded=3)
        a = await s.acquire(ref("a"), spec("/m/a", ("w:1", "w:2")), None)
        s.release(await s.acquire(ref("local"), spec("/m/local", ()), None))
        # "b" shares w:2 with "a", which is busy: its load waits, then evicts "a" once it is idle.
        b_task = asyncio.ensure_future(s.acquire(ref("b"), spec("/m/b", ("w:2",)), None))
        await asyncio.sleep(0.05)
        assert not b_task.done() and "a" in s.loaded
        s.release(a)
        b = await asyncio.wait_for(b_task, 5)
        assert set(s.loaded) == {"local", "b"} and a.runner.stopped  # type: ignore[attr-defined]
        # Other workers: both stay loaded.
        s.release(b)
        s.release(await s.acquire(ref("c"), spec("/m/c", ("w:3",)), None))
        assert set(s.loaded) == {"local", "b", "c"}

    asyncio.run(main())


def test_an_rpc_build_is_not_a_gpu_build() -> None:
    """The installed build has the RPC backend, which makes llama_supports_gpu_offload() true; herd's own check
    looks for a GPU backend by name, so a CPU machine's report still says no GPU offload. It cannot show the
    opposite case (a CUDA build) here: that is bench/gpu_check.sh's."""
    import llama_cpp

    from herd.engine.ggml import Ggml, gpu_offload_in_build

    g = Ggml()
    names = {(g.fn["ggml_backend_reg_name"](g.fn["ggml_backend_reg_get"](i)) or b"").decode()
             for i in range(g.fn["ggml_backend_reg_count"]())}
    assert "CPU" in names
    gpu = names - {"CPU", "RPC"}
    assert gpu_offload_in_build() == bool(gpu)
    if "RPC" in names and not gpu:
        assert llama_cpp.llama_supports_gpu_offload()  # why the plain check is not enough

"""Drives Open WebUI in headless Chromium against herd, as a new user would, and records what the user sees.

Needs Open WebUI and Playwright in their own venv (/opt/owui) and Debian's chromium; run it with that venv's Python:

    /opt/owui/bin/python bench/openwebui_drive.py --launch

`--launch` starts, from this checkout, a fresh `herd serve` on 127.0.0.1:11600 (models in /tmp/owui-herd-models), the
logging proxy (bench/openwebui_proxy.py) on 127.0.0.1:11700, and Open WebUI on 127.0.0.1:8080, offline, with a fresh
data dir and default settings, pointed at the proxy; it stops all three at the end. Without `--launch` it drives a UI
already running at `--url`.

Steps: pick smollm2:135m, send a first message, follow-up, regenerate, continue response, then a long answer that is
stopped. Each step waits (bounded) for the stream to end, samples the answer while it streams (to see that it grows
token by token), and saves a screenshot in --shots (never the repository). A summary goes to --shots/observations.json;
the proxy's log (--proxy-log) holds the exact requests Open WebUI sent. Not a test: it prints what happened.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2:135m"
STOP_BUTTON = 'button[aria-label="Stop"]'
RESPONSE = "#response-content-container"

# Open WebUI's settings for an offline run with its defaults otherwise: no login, no OpenAI connection, nothing fetched
# from Hugging Face (the default embedding model then fails to load, which is logged and harmless for chat), no
# version check or telemetry.
WEBUI_ENV = {
    "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WEBUI_AUTH": "False",
    "ENABLE_OPENAI_API": "False", "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "False",
    "RAG_RERANKING_MODEL_AUTO_UPDATE": "False", "WHISPER_MODEL_AUTO_UPDATE": "False",
    "ENABLE_VERSION_UPDATE_CHECK": "False", "ANONYMIZED_TELEMETRY": "False", "SCARF_NO_ANALYTICS": "true",
    "DO_NOT_TRACK": "true",
}


@dataclass
class Step:
    name: str
    ok: bool = False
    note: str = ""
    seconds: float = 0.0
    done_at: float = 0.0  # seconds until the answer showed its action buttons (0: never)
    samples: list[int] = field(default_factory=list)  # answer length seen at each poll while streaming
    answer: str = ""
    screenshot: str = ""


def system_python() -> str:
    """The first python3 on PATH outside any virtual environment: herd is installed there, not in Open WebUI's."""
    venv = os.environ.get("VIRTUAL_ENV") or sys.prefix
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if not d.startswith(venv))
    return shutil.which("python3", path=path) or "python3"


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Stack:
    """herd, the proxy and Open WebUI as child processes, each logging to a file next to the screenshots."""

    def __init__(self, shots: Path, proxy_log: Path, herd_port: int, proxy_port: int, webui_port: int) -> None:
        self.shots, self.proxy_log = shots, proxy_log
        self.herd_port, self.proxy_port, self.webui_port = herd_port, proxy_port, webui_port
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        log = (self.shots / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT))

    def start(self, python: str, webui: str) -> None:
        models = Path("/tmp/owui-herd-models")
        models.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_MODELS", "VIRTUAL_ENV")}
        paths = base.get("PATH", "").split(os.pathsep)
        base["PATH"] = os.pathsep.join(d for d in paths if not d.startswith(sys.prefix))
        self.spawn("herd", [python, "-m", "herd.cli", "serve"],
                   {**base, "HERD_MODELS": str(models), "OLLAMA_HOST": f"127.0.0.1:{self.herd_port}"}, REPO)
        wait_http(f"http://127.0.0.1:{self.herd_port}/", 90)
        self.proxy_log.unlink(missing_ok=True)
        self.spawn("proxy", [python, str(REPO / "bench" / "openwebui_proxy.py"),
                             "--listen", f"127.0.0.1:{self.proxy_port}",
                             "--upstream", f"http://127.0.0.1:{self.herd_port}", "--log", str(self.proxy_log)],
                   base, REPO)
        wait_http(f"http://127.0.0.1:{self.proxy_port}/api/version", 30)
        data = Path("/tmp/owui-data")
        shutil.rmtree(data, ignore_errors=True)  # a fresh install: no chats, no saved settings
        data.mkdir(parents=True)
        env = {**base, **WEBUI_ENV, "DATA_DIR": str(data),
               "OLLAMA_BASE_URL": f"http://127.0.0.1:{self.proxy_port}"}
        # `open-webui serve` writes its secret key into the working directory, so run it in the data dir.
        self.spawn("webui", [webui, "serve", "--host", "127.0.0.1", "--port", str(self.webui_port)], env, data)
        wait_http(f"http://127.0.0.1:{self.webui_port}/health", 400)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Driver:
    def __init__(self, page: Page, shots: Path, step_timeout: float) -> None:
        self.page, self.shots, self.step_timeout = page, shots, step_timeout
        self.steps: list[Step] = []
        self.n = 0
        self.done_before = 0

    def shot(self, step: Step, label: str) -> None:
        self.n += 1
        path = self.shots / f"{self.n:02d}-{label}.png"
        self.page.screenshot(path=str(path), full_page=False)
        step.screenshot = str(path)

    def answers(self) -> list[str]:
        return [t.strip() for t in self.page.locator(RESPONSE).all_inner_texts()]

    def done_buttons(self) -> int:
        # Open WebUI shows Regenerate under an answer only once that answer's stream is done.
        return self.page.locator('button[aria-label="Regenerate"]').count()

    def dismiss_popups(self) -> None:
        # A fresh install greets the first visit with a changelog ("Okay, Let's Go!") and may show onboarding.
        for label in ("Okay, Let's Go!", "Get started", "Skip"):
            btn = self.page.get_by_role("button", name=label)
            try:
                if btn.count() and btn.first.is_visible():
                    btn.first.click(timeout=3000)
                    self.page.wait_for_timeout(500)
            except PlaywrightTimeout:
                pass

    def wait_stream(self, step: Step, count_before: int, stop_after: float | None = None) -> None:
        """Waits until a new answer exists and its stream has ended, sampling its length on the way.

        With stop_after, presses Stop once the answer has text and that many seconds have passed."""
        start = time.monotonic()
        deadline = start + self.step_timeout
        seen_stop = False
        pressed = False
        low = self.done_before
        timed_out = False
        while time.monotonic() < deadline:
            texts = self.answers()
            generating = self.page.locator(STOP_BUTTON).count() > 0
            seen_stop = seen_stop or generating
            if len(texts) >= count_before:
                current = texts[-1] if texts else ""
                if not step.samples or step.samples[-1] != len(current):
                    step.samples.append(len(current))
            elapsed = time.monotonic() - start
            # Stop the stop step's answer after stop_after seconds, text or not (a stop during prefill is what users
            # do with a slow first token), and any step's answer that outlives the step, so the next step can run.
            limit = stop_after if stop_after is not None else self.step_timeout - 10
            limit = limit if not step.done_at else self.step_timeout
            if generating and not pressed and elapsed >= limit:
                self.shot(step, f"{step.name}-before-stop")
                self.page.locator(STOP_BUTTON).first.click(timeout=5000)
                pressed = True
                step.note += f"pressed Stop after {elapsed:.1f} s; "
            if seen_stop and not generating:
                break
            # The answer is complete once its action buttons show; the Stop button can stay on for minutes after
            # that while Open WebUI's background tasks (title, follow-up suggestions, tags) run on the same model.
            # Regenerate and continue hide the buttons of the answer they rewrite, so count against the lowest seen.
            buttons = self.done_buttons()
            low = min(low, buttons)
            if stop_after is None and buttons > low:
                if not step.done_at:
                    step.done_at = round(elapsed, 1)
                if not generating or elapsed - step.done_at > 60:
                    break
            # Open WebUI may finish before a poll ever sees the Stop button (a fast error): accept a changed answer.
            if not seen_stop and time.monotonic() - start > 20 and len(texts) >= count_before:
                break
            self.page.wait_for_timeout(400)
        else:
            timed_out = True
            step.note += f"stream did not end within {self.step_timeout:.0f} s; "
        step.seconds = round(time.monotonic() - start, 1)
        self.page.wait_for_timeout(2000)  # the markdown view lags the stream; read the answer once it has settled
        texts = self.answers()
        step.answer = texts[-1] if texts else ""
        errors = self.page.locator(".text-red-500, [class*='bg-red-']").all_inner_texts()
        if errors:
            step.note += f"error shown: {' | '.join(e.strip() for e in errors if e.strip())[:500]}; "
        grew = len({s for s in step.samples if s > 0}) > 1
        step.note += f"answer grew over {len(step.samples)} polls ({'streamed' if grew else 'not seen growing'}); "
        step.ok = not errors and not timed_out and (
            pressed if stop_after is not None else bool(step.answer) and not pressed)

    def send(self, text: str) -> None:
        box = self.page.locator("#chat-input")
        box.click()
        self.page.keyboard.type(text)
        self.page.locator("#send-message-button").click(timeout=10000)

    def run_step(self, name: str, action, stop_after: float | None = None) -> Step:  # type: ignore[no-untyped-def]
        step = Step(name)
        self.steps.append(step)
        print(f"-- {name}", flush=True)
        try:
            before = len(self.answers())
            self.done_before = self.done_buttons()
            action()
            self.wait_stream(step, before, stop_after)
        except Exception as exc:  # keep going: a later step can still tell the lead something
            step.note += f"failed: {type(exc).__name__}: {str(exc)[:300]}; "
        try:
            self.shot(step, name)
        except Exception as exc:
            step.note += f"no screenshot: {exc}; "
        print(f"   ok={step.ok} {step.seconds}s {step.note}\n   answer: {step.answer[:300]!r}", flush=True)
        return step

    def pick_model(self) -> Step:
        step = Step("pick-model")
        self.steps.append(step)
        try:
            # With one model on the server, a fresh Open WebUI selects it by itself; the selector then names it.
            chosen = self.page.locator("button", has_text=MODEL)
            if chosen.count():
                step.ok, step.note = True, f"already selected: {chosen.first.inner_text().strip()!r}"
                self.shot(step, "pick-model")
                print(f"-- pick-model ok={step.ok} {step.note}", flush=True)
                return step
            self.page.locator("#model-selector-0-button").click(timeout=30000)
            self.page.wait_for_timeout(800)
            search = self.page.locator("#model-search-input")
            if search.count():
                search.fill(MODEL)
            self.page.locator("#model-selector-list, [role='listbox'], [role='menu']").get_by_text(
                MODEL, exact=True).first.click(timeout=10000)
            self.page.wait_for_timeout(800)
            label = self.page.locator("#model-selector-0-button").inner_text(timeout=5000)
            step.ok = MODEL in label
            step.note = f"selector shows {label.strip()!r}"
        except Exception as exc:
            step.note = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        self.shot(step, "pick-model")
        print(f"-- pick-model ok={step.ok} {step.note}", flush=True)
        return step


def drive(url: str, shots: Path, step_timeout: float, chromium: str) -> list[Step]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30000)
            driver = Driver(page, shots, step_timeout)
            # Not "networkidle": the socket.io connection keeps the network busy for good.
            page.goto(url, wait_until="load", timeout=120000)
            for _ in range(60):  # bounded: onboarding and the changelog can appear before the chat page
                driver.dismiss_popups()
                if page.locator("#model-selector-0-button").count():
                    break
                page.wait_for_timeout(2000)
            page.wait_for_timeout(1500)
            driver.dismiss_popups()
            open_step = Step("open", ok=True, note=f"title {page.title()!r}")
            driver.steps.append(open_step)
            driver.shot(open_step, "open")
            driver.pick_model()
            driver.dismiss_popups()
            driver.run_step("first-message", lambda: driver.send("Why is the sky blue?"))
            driver.run_step("follow-up", lambda: driver.send("And why are sunsets red?"))

            def regenerate() -> None:
                page.locator('button[aria-label="Regenerate"]').last.click()
                page.get_by_text("Try Again", exact=True).first.click(timeout=5000)

            driver.run_step("regenerate", regenerate)
            driver.run_step("continue", lambda: page.locator("#continue-response-button").last.click())
            driver.run_step("stop", lambda: driver.send(
                "Write a very long story, at least two thousand words, about a lighthouse keeper and a storm."),
                stop_after=20.0)
            # After a stop the chat must still work: one more short message.
            driver.run_step("after-stop", lambda: driver.send("Say hello."))
            return driver.steps
        finally:
            browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launch", action="store_true", help="start herd, the proxy and Open WebUI first")
    ap.add_argument("--url", default="http://127.0.0.1:8080/")
    ap.add_argument("--shots", default="/tmp/owui-shots")
    ap.add_argument("--proxy-log", default="/tmp/owui-proxy.jsonl")
    ap.add_argument("--step-timeout", type=float, default=300, help="seconds each step may take (the machine is slow)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--herd-python", default=system_python(),
                    help="the Python that has herd installed (not the Open WebUI venv)")
    ap.add_argument("--webui", default="/opt/owui/bin/open-webui")
    args = ap.parse_args()
    shots = Path(args.shots)
    if REPO in shots.resolve().parents or shots.resolve() == REPO:
        sys.exit("screenshots stay out of the repository")
    shots.mkdir(parents=True, exist_ok=True)
    stack = Stack(shots, Path(args.proxy_log), 11600, 11700, 8080) if args.launch else None
    try:
        if stack is not None:
            stack.start(args.herd_python, args.webui)
        steps = drive(args.url, shots, args.step_timeout, args.chromium)
    finally:
        if stack is not None:
            stack.stop()
    (shots / "observations.json").write_text(json.dumps([asdict(s) for s in steps], indent=2))
    print("\n".join(f"{s.name:14} {'OK ' if s.ok else 'FAIL'} {s.note}" for s in steps))
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())

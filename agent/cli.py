"""`lfm-call`: the command line.

Each subcommand loads settings through the one loader (default.yaml -> --config -> environment ->
--set), configures logging, then does its work. Bad settings fail before anything starts, with the
source, the key and what was expected. Models are loaded here, at the entry point, never inside
constructors.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import CliError
from agent.log import configure_logging
from config.loader import ConfigError, load_settings, parse_override
from config.schema import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _settings(args: argparse.Namespace) -> Settings:
    overrides = [parse_override(text) for text in args.set or []]
    extra = getattr(args, "_overrides", None)
    if extra:
        overrides.extend(extra(args))
    settings = load_settings(args.config, overrides=overrides)
    _configure_console(args, settings)
    return settings


# Where each command's log lines go. A server logs to its console (a service manager collects it);
# a command with a run folder writes them to <out>/log.jsonl and keeps its console to progress and
# results; the other one-shot commands show warnings and errors only. --verbose: every line on the
# console too.
CONSOLE_SERVER = "server"
CONSOLE_RUN = "run"
CONSOLE_TOOL = "tool"


def run_log_path(args: argparse.Namespace) -> Path | None:
    """<out>/log.jsonl for commands with a run folder (simulate, smoke), else None."""
    if getattr(args, "_console", CONSOLE_TOOL) != CONSOLE_RUN:
        return None
    return Path(args.out) / "log.jsonl"


def _configure_console(args: argparse.Namespace, settings: Settings) -> None:
    level = args.log_level or settings.logging.level
    kind = getattr(args, "_console", CONSOLE_TOOL)
    console: str | None = None  # None: everything logged at `level`
    if not getattr(args, "verbose", False):
        console = {CONSOLE_SERVER: None, CONSOLE_RUN: "ERROR", CONSOLE_TOOL: "WARNING"}[kind]
    configure_logging(level, settings.logging.format, console_level=console, log_file=run_log_path(args))


def _model_overrides(args: argparse.Namespace) -> list[dict[str, dict[str, Any]]]:
    out: list[dict[str, dict[str, Any]]] = []
    if getattr(args, "model", None):
        out.append({"model": {"ref": args.model, "offline_fallback": "error"}})
    if getattr(args, "device", None):
        out.append({"model": {"device": args.device}})
    if getattr(args, "dtype", None):
        out.append({"model": {"dtype": args.dtype}})
    return out


# ---------------------------------------------------------------------------------------------
# subcommands


SIP_LOCAL_PROFILE = Path(__file__).resolve().parent.parent / "config" / "sip-local.yaml"


def _serve_overrides(args: argparse.Namespace) -> list[dict[str, dict[str, Any]]]:
    out = _model_overrides(args)
    if getattr(args, "sip", False):
        out.insert(0, {"sip": {"enabled": True}})
    return out


def refuse_tiny_model(settings: Settings) -> None:
    """`serve` answers real callers: without the weights (the offline tiny fallback) or on a tiny
    random checkpoint it refuses to start, saying how to get the weights (--allow-tiny-model: serve it)."""
    from agent.model_choice import ModelChoiceError, checkpoint_is_tiny, choose_model, download_command

    ref = settings.model.ref
    try:
        choice = choose_model(dataclasses.replace(settings.model, offline_fallback="error"))
    except ModelChoiceError:
        raise CliError(
            f"no model weights on this machine for model.ref {ref!r}: callers would hear the random offline "
            f"tiny model (noise). Get the weights with:\n    {download_command(ref)}\n"
            "or pass --allow-tiny-model to serve the tiny model anyway (a test or a demo of the plumbing)"
        ) from None
    if checkpoint_is_tiny(choice.path):
        raise CliError(f"{choice.path} is a tiny random checkpoint (callers would hear noise); "
                       f"get the real weights with: {download_command(ref)}, or pass --allow-tiny-model")


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from agent.http_app import auth_required
    from agent.provenance import ProvenanceError
    from agent.server import serve

    if args.sip and args.config is None:
        args.config = str(SIP_LOCAL_PROFILE)
    settings = _settings(args)
    auth_required(settings.http)  # a bad profile fails first (auth on without a token)
    if not args.allow_tiny_model:
        refuse_tiny_model(settings)
    try:
        code: int = asyncio.run(serve(settings))
    except (OSError, ProvenanceError) as exc:  # e.g. the HTTP or SIP port is taken, a bad signing key
        raise CliError(f"cannot serve: {exc}") from None
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.sim_command import DEFAULT_CONCURRENCY, run_simulate

    concurrency = args.concurrency or DEFAULT_CONCURRENCY[args.transport]
    code: int = run_simulate(_settings(args), list(args.scenarios), args.transport, concurrency, Path(args.out),
                             run_log_path(args))
    return code


def cmd_dial(args: argparse.Namespace) -> int:
    import asyncio

    from agent.capacity import CallRefused
    from agent.metrics import Metrics
    from agent.runtime import build_runtime
    from sip_bridge.gateway import SipGateway

    settings = _settings(args)
    if not str(args.uri).startswith(("sip:", "sips:")):
        raise CliError(f"dial needs a SIP URI like sip:user@host:port, got {args.uri!r}")

    async def dial() -> int:
        runtime = build_runtime(settings)
        gateway = SipGateway(runtime.calls, settings.sip, Metrics(), jitter_buffer_ms=settings.audio.jitter_buffer_ms)
        try:
            await gateway.start()
            try:
                call_id = await gateway.dial(args.uri)
            except (CallRefused, ValueError) as exc:
                raise CliError(f"cannot dial {args.uri}: {exc}") from None
            print(f"dialing {args.uri} (Call-ID {call_id}) from {gateway.local_address[0]}:"
                  f"{gateway.local_address[1]}", file=sys.stderr)
            summary = await gateway.wait_ended(call_id)
            if summary is None:
                print(f"the call to {args.uri} was not answered", file=sys.stderr)
                return EXIT_FAILED
            print(f"call ended ({summary.ended_by or summary.error}) after {summary.duration_ms / 1000:.1f} s, "
                  f"{len(summary.turns)} agent turns, dtmf {summary.dtmf!r}", file=sys.stderr)
            return EXIT_FAILED if summary.error else EXIT_OK
        finally:
            await gateway.stop()
            runtime.close()

    from agent.provenance import ProvenanceError

    try:
        return asyncio.run(dial())
    except ProvenanceError as exc:  # server.record_dir set with a signing key that cannot be used
        raise CliError(f"cannot dial: {exc}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    _settings(args)
    from bench import suite

    # options the `bench` parser does not define yet (--out, --sections, ...) take the suite's defaults
    full = suite.namespace_with_defaults(args)
    try:
        suite.parse_sections(full.sections)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    code: int = suite.run(full, suite.argv_of(full))
    return code


def cmd_asr(args: argparse.Namespace) -> int:
    from agent.commands import run_asr

    code: int = run_asr(_settings(args), Path(args.wav))
    return code


def cmd_tts(args: argparse.Namespace) -> int:
    from agent.commands import run_tts

    code: int = run_tts(_settings(args), args.text, Path(args.output), args.voice)
    return code


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from agent.commands import run_make_tiny

    _settings(args)
    code: int = run_make_tiny(Path(args.dir), args.seed, args.long_replies)
    return code


def cmd_smoke(args: argparse.Namespace) -> int:
    from agent.commands import run_smoke

    code: int = run_smoke(_settings(args), Path(args.out))
    return code


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from config.loader import settings_as_dict

    settings = _settings(args)
    shown = settings_as_dict(settings)
    for section in shown.values():  # secrets are never printed
        for key in section:
            if any(word in key for word in ("secret", "password", "token")) and section[key]:
                section[key] = "***"
    sys.stdout.write(yaml.safe_dump(shown, sort_keys=False))
    return EXIT_OK


def cmd_turn_eval(args: argparse.Namespace) -> int:
    from agent.turn_eval import run_command

    return run_command(args, _settings(args))


def cmd_verify(args: argparse.Namespace) -> int:
    from agent import verify

    settings = _settings(args)
    if args.node_key:
        code: int = verify.run_node_key(settings)
    elif args.record:
        code = verify.run_verify_record(settings, Path(args.record), list(args.public_key or []),
                                        check_mark=not args.no_mark)
    elif args.wav:
        code = verify.run_verify_wav(settings, Path(args.wav), args.alpha, args.json)
    else:
        print("lfm-call verify: give FILE.wav, --record RECORD.json or --node-key", file=sys.stderr)
        code = EXIT_USAGE
    return code


# ---------------------------------------------------------------------------------------------
# parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="profile YAML merged over config/default.yaml")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="what is logged (default: logging.level)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log lines on the console too (simulate and smoke keep them in <out>/log.jsonl; "
                        "other commands show warnings and errors only)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH|REPO",
                   help="checkpoint folder or Hugging Face repo id (default: model.ref)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: model.device)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(_overrides=_model_overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfm-call",
        description="Telephony voice agent around LFM2-Audio-1.5B: SIP gateway, WebRTC calls "
        "and scripted call simulations.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str,
            console: str = CONSOLE_TOOL) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p)
        p.set_defaults(func=func, _console=console)
        return p

    p = add("serve", cmd_serve, "run the agent: HTTP (web page, WebRTC, health, metrics) and SIP", CONSOLE_SERVER)
    _add_model(p)
    p.add_argument("--sip", action="store_true",
                   help="answer SIP too; without --config: the loopback profile config/sip-local.yaml "
                        "(SIP on 127.0.0.1:5080, no token)")
    p.add_argument("--allow-tiny-model", action="store_true",
                   help="serve the random offline tiny model when the weights are missing (callers hear "
                        "noise; without this flag serve refuses to start)")
    p.set_defaults(_overrides=_serve_overrides)
    p = add("simulate", cmd_simulate, "run scripted call simulations and write a report", CONSOLE_RUN)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO.yaml")
    p.add_argument("--transport", default="inproc", choices=["inproc", "webrtc", "sip"])
    p.add_argument("--concurrency", type=int, default=None,
                   help="calls at once (default: inproc 4, sip 2, webrtc 1 — both ends of every call run "
                        "in this process; agent.sim_command.DEFAULT_CONCURRENCY)")
    p.add_argument("--out", default="runs/latest", metavar="DIR")
    _add_model(p)
    p = add("dial", cmd_dial, "place an outbound SIP call to a URI and talk to the callee", CONSOLE_SERVER)
    p.add_argument("uri", metavar="sip:user@host")
    _add_model(p)
    p = add("asr", cmd_asr, "transcribe a WAV file with the model's ASR mode")
    p.add_argument("wav", metavar="FILE.wav")
    _add_model(p)
    p = add("tts", cmd_tts, "speak text with the model's TTS mode into a WAV file")
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True, metavar="OUT.wav")
    p.add_argument("--voice", metavar="DESCRIPTION", help="voice/style description")
    _add_model(p)
    p = add("make-tiny-checkpoint", cmd_make_tiny,
            "write a tiny random checkpoint in the official layout (tests, offline demo)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-replies", action="store_true",
                   help="demo variant: replies never end by themselves (they last the configured cap)")
    p = add("smoke", cmd_smoke,
            "offline smoke run: agent reply to a spoken question through the G.711 line path", CONSOLE_RUN)
    p.add_argument("--out", default="runs/smoke", metavar="DIR")
    _add_model(p)
    p = add("bench", cmd_bench, "run the benchmark suite (BENCHMARKS.md tables and JSON)")
    from bench.suite import add_arguments

    add_arguments(p)
    p = add("verify", cmd_verify, "is there watermarked agent speech in a WAV file; is a call's signed "
            "provenance record genuine (exit 0 yes, 1 no, 2 bad input)")
    p.add_argument("wav", nargs="?", metavar="FILE.wav", help="recording to search for the agent's watermark")
    p.add_argument("--record", metavar="RECORD.json", help="check a signed provenance record offline")
    p.add_argument("--public-key", action="append", metavar="KEY",
                   help="trusted Ed25519 public key (PEM file or base64), repeatable; replaces the configured ones")
    p.add_argument("--no-mark", action="store_true", help="with --record: skip the watermark check")
    p.add_argument("--alpha", type=float, default=1e-4, metavar="P",
                   help="false-positive probability per 3 s window at the threshold (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    p.add_argument("--node-key", action="store_true", help="print this node's public signing key (PEM)")
    p = add("turn-eval", cmd_turn_eval, "end-of-turn detectors on labelled WAVs: false cut-offs vs median "
            "latency per threshold, and a PNG plot")
    from agent.turn_eval import add_arguments as add_turn_eval_arguments

    add_turn_eval_arguments(p)
    p = add("config", cmd_config, "print the effective settings after all layers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # numpy's BLAS runs on the event loop's thread (echo gate, resampling): one thread, so that it
    # never spins against the engine's worker for the same cores (stalls of hundreds of ms seen)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"lfm-call: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"lfm-call: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

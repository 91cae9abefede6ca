"""Every command that reads remotely takes ``--retries`` from its one owner (``sources/remote_option.py``),
and it holds for the whole run, over a config's ``retries:``.

The commands are walked from the click tree (as ``test_cli_contract.py`` does), so a command added without a
place in :data:`READS_REMOTELY` or :data:`READS_NOTHING_REMOTE` fails
:func:`test_every_command_is_classified`; a command that takes a ``--tokenizer`` (a path or an
``hf://``/``s3://``/``https://`` URL) reads remotely by definition. Then a server on 127.0.0.1 that answers
every request with 503 shows the flag's attempts in the one-line error of the commands that read shards
(build, estimate, verify, stream, train, audit duplicates).
"""

from __future__ import annotations

import signal

import click
import fault_server
import pytest
import yaml
from test_cli_contract import leaf_commands
from test_remote import FAST, _mixtures

from elm_data.cli import cli, run
from elm_data.manifests.build import build_manifest
from elm_data.sources import remote
from elm_data.sources.remote_option import RetriesOption, retries_option

# shards, blocks or a tokenizer URL: through sources/remote.py, so `--retries` applies
READS_REMOTELY = {
    "build manifest",
    "estimate",
    "verify",
    "stream",
    "train",
    "audit contamination",
    "audit duplicates",
    "audit-run",
    "trace",
    "bench train",
    "compress",
    "eval",
    "export hf",
    "export mlx",
    "demo",
    "tokenizer fetch",
    "tokenizer show",
}
# a manifest's or a run's own files only (local folders), or nothing at all; `init --pin` asks the hub's API
# for one commit per repo, and says which cause (network, login) failed rather than retrying
READS_NOTHING_REMOTE = {"sample", "audit mixture", "export croissant", "report", "init"}


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli, info_name="elm-data")
    found = {}
    for path in leaf_commands(cli, ctx):
        group, command = cli, None
        for name in path.split():
            command = group.get_command(ctx, name)
            group = command
        found[path] = command
    return found


def test_every_command_is_classified():
    commands = set(_commands())
    assert not READS_REMOTELY & READS_NOTHING_REMOTE
    assert commands == READS_REMOTELY | READS_NOTHING_REMOTE, (
        f"unclassified: {commands - READS_REMOTELY - READS_NOTHING_REMOTE}; "
        f"gone: {(READS_REMOTELY | READS_NOTHING_REMOTE) - commands}"
    )


def test_every_command_that_reads_remotely_takes_retries_from_its_one_owner():
    for path, command in _commands().items():
        options = {o: p for p in command.params for o in getattr(p, "opts", ())}
        if "--tokenizer" in options:
            assert path in READS_REMOTELY, f"{path} takes --tokenizer (a URL is read remotely)"
        retries = options.get("--retries")
        if path in READS_REMOTELY:
            assert isinstance(retries, RetriesOption), f"{path}: no --retries from sources/remote_option.py"
        else:
            assert retries is None, f"{path} reads nothing remote, yet takes --retries"


def test_the_flag_holds_for_the_run_over_a_config_and_in_the_settings_workers_get():
    seen = {}

    @click.command()
    @retries_option
    def reader() -> None:
        remote.configure(remote.RetryPolicy(attempts=5, backoff_s=0.25))  # what a config's retries: sets
        seen.update(now=remote.policy(), workers=remote.settings()["policy"])

    before = remote.settings()
    try:
        assert reader.main(["--retries", "3"], standalone_mode=False) is None
        assert seen["now"] == seen["workers"] == remote.RetryPolicy(attempts=3, backoff_s=0.25)
        assert remote.policy() == remote.RetryPolicy(attempts=5, backoff_s=0.25)  # the flag ends with its run
        reader.main([], standalone_mode=False)
        assert seen["now"].attempts == 5  # without the flag, the config's
    finally:
        remote.configure(**before)


@pytest.fixture(scope="module")
def refusing_server(sample_dir, tokenizer_path, tmp_path_factory):
    """One JSONL subset served on 127.0.0.1 and built into a manifest; then every request answered 503."""
    out = tmp_path_factory.mktemp("refusing")
    faults = fault_server.Faults()
    before = remote.settings()
    remote.configure(FAST)
    try:
        with fault_server.serve(sample_dir, faults) as (url, _):
            _, http_yaml = _mixtures(sample_dir, url, out, slice(1, 2))
            build_manifest(http_yaml, out / "manifest", tokenizer=tokenizer_path, block_bytes=16 << 10)
            faults.fail_every = 1
            raw = {
                "manifest": str(out / "manifest"),
                "model": "tiny",
                "seq_len": 32,
                "batch_size": 2,
                "max_steps": 2,
                "retries": {"attempts": 6, "backoff_s": 0.001, "max_backoff_s": 0.01},
            }
            (out / "train.yaml").write_text(yaml.safe_dump(raw))
            yield out, http_yaml
    finally:
        remote.configure(**before)


@pytest.fixture
def _keep_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize(
    "args",
    [
        ["build", "manifest", "{mixture}", "--out", "{out}/m2"],
        ["estimate", "{mixture}", "--sample-docs", "2"],
        ["verify", "{out}/manifest"],
        ["stream", "{out}/manifest", "--take", "1", "--readahead-bytes", "0"],
        pytest.param(
            ["train", "{out}/train.yaml", "--out", "{out}/run", "--no-progress"], marks=pytest.mark.slow
        ),
        ["audit", "duplicates", "{out}/manifest"],
    ],
    ids=lambda a: " ".join(a[:2]),  # train (torch: seconds) in the slow tier; its flag is checked above too
)
def test_a_command_reading_a_refusing_server_gives_up_after_the_flags_attempts(
    refusing_server, args, capsys, _keep_sigterm
):
    out, mixture = refusing_server
    before = remote.settings()
    remote.configure(FAST)
    try:
        code = run([*(a.format(out=out, mixture=mixture) for a in args), "--retries", "2"])
    finally:
        remote.configure(**before)
    err = capsys.readouterr().err
    # verify reports unreadable shards as a difference; the others fail in one line
    assert code in (1, 2), err
    assert "gave up after 2 attempt(s)" in err and "503" in err, err

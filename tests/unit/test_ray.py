"""``ptserve ray`` without a cluster: its settings and options, the deployment's Ray options,
the settings each replica gets, the Ray Serve config it prints, and the replica health check."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ptserve.cli import build_parser, main
from ptserve.integrations.ray_serve import RayCommandError, import_ray_app
from ptserve.integrations.ray_settings import RaySettings
from ptserve.settings import EXAMPLE_MODEL, Settings
from tests.conftest import serving_app

try:
    ray_app = import_ray_app()
except RayCommandError:
    pytest.skip("the ray extra is not installed", allow_module_level=True)


def from_cli(*argv: str) -> Settings:
    from ptserve.cli import _nested

    args = vars(build_parser().parse_args(["ray", *argv]))
    del args["command"], args["print_config"]
    return Settings(**_nested(args))


# ---- settings and options -------------------------------------------------------------------


def test_ray_options_map_onto_the_ray_table() -> None:
    settings = from_cli(
        "m.pt", "--max-replicas", "4", "--min-replicas", "0", "--target-ongoing-requests", "8",
        "--replica-cpus", "2", "--replica-gpus", "0.5", "--address", "ray://head:10001",
        "--max-batch-size", "16",
    )  # fmt: skip
    assert settings.ray == RaySettings(
        max_replicas=4, min_replicas=0, target_ongoing_requests=8, replica_cpus=2,
        replica_gpus=0.5, address="ray://head:10001",
    )  # fmt: skip
    assert settings.max_batch_size == 16
    assert settings.ray.autoscaling


def test_the_ray_table_merges_config_file_env_and_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ptserve.toml"
    config.write_text("[ray]\nreplica_cpus = 2.0\nnum_replicas = 3\n")
    monkeypatch.setenv("PTSERVE_RAY", '{"replica_gpus": 1}')
    settings = from_cli("--config", str(config), "--num-replicas", "5")
    assert (settings.ray.num_replicas, settings.ray.replica_cpus) == (5, 2.0)
    assert settings.ray.replica_gpus == 1  # env beats the file, the CLI beats both


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_replicas": 2, "max_replicas": 3}, "not both"),
        ({"num_replicas": 2, "upscale_delay_s": 1}, "not both"),
        ({"min_replicas": 2}, "min_replicas is an autoscaling option: give max_replicas too"),
        ({"target_ongoing_requests": 2}, "give max_replicas too"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas is more than max_replicas"),
        ({"replica_cpus": 0}, "greater than 0"),
        ({"num_replicas": 0}, "greater than 0"),
        ({"replicas": 2}, "Extra inputs are not permitted"),
    ],
)
def test_bad_ray_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(ray=values)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ray", "--num-replicas", "2", "--max-replicas", "3"], "ray: give either num_replicas"),
        (["ray", "--replica-cpus", "0"], "ray.replica_cpus: Input should be greater than 0"),
        (["ray", "--workers", "2"], "unrecognized arguments: --workers"),
        (["ray", "--num-replicas", "two"], "invalid int value: 'two'"),
        (["serve", "--num-replicas", "2"], "unrecognized arguments: --num-replicas"),
    ],
)
def test_bad_options_exit_2_with_one_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--print-config"] if argv[0] == "ray" else argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


# ---- what Ray is told -----------------------------------------------------------------------


def test_deployment_options_follow_ptserve_settings() -> None:
    settings = Settings(max_batch_size=8, drain_timeout_s=12, access_log=False, log_level="debug")
    assert ray_app.deployment_options(settings) == {
        "max_ongoing_requests": 16,  # two batches: one in the model, the next one filling
        "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.0},
        "graceful_shutdown_timeout_s": 12,  # Ray kills a stopping replica no sooner
        "logging_config": {"log_level": "DEBUG", "enable_access_log": False},
    }
    fixed = ray_app.deployment_options(Settings(ray={"num_replicas": 3, "replica_cpus": 2}))
    assert fixed["num_replicas"] == 3
    assert fixed["ray_actor_options"]["num_cpus"] == 2
    given = ray_app.deployment_options(Settings(ray={"max_ongoing_requests": 5}))
    assert given["max_ongoing_requests"] == 5


def test_autoscaling_defaults_aim_at_full_batches() -> None:
    options = ray_app.deployment_options(Settings(max_batch_size=16, ray={"max_replicas": 4}))
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 16,
    }
    delays = {"max_replicas": 2, "min_replicas": 0, "upscale_delay_s": 0, "downscale_delay_s": 5}
    assert ray_app.deployment_options(Settings(ray=delays))["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 2,
        "target_ongoing_requests": 32,
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
    }


def test_replicas_get_what_was_set_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PTSERVE_MAX_BATCH_SIZE", "8")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    settings = from_cli(
        "model.pt", "--labels", "labels.txt", "--handler", "hooks.py", "--max-batch-size", "32",
        "--port", "9000", "--num-replicas", "2",
    )  # fmt: skip
    data = ray_app.replica_settings(settings)
    assert data == {
        "model_path": str(tmp_path / "model.pt"),
        "labels": str(tmp_path / "labels.txt"),
        "handler": str(tmp_path / "hooks.py"),
        # set on the command line to the default, over an environment that says otherwise:
        # a replica, whose environment may differ, must still get 32
        "max_batch_size": 32,
    }
    assert Settings.model_validate(data).max_batch_size == 32
    module_handler = from_cli("--handler", "my_pkg.hooks:Handler")
    assert ray_app.replica_settings(module_handler)["handler"] == "my_pkg.hooks:Handler"


@pytest.mark.parametrize(("cpus", "threads"), [(0.5, 1), (1, 1), (2, 1), (3, 2), (8, 7)])
def test_replica_torch_threads_leave_a_core_to_the_event_loop(cpus: float, threads: int) -> None:
    assert ray_app.torch_threads(cpus) == threads


# ---- the printed config ---------------------------------------------------------------------


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    main(["ray", *argv, "--print-config"])
    config: dict[str, Any] = yaml.safe_load(capsys.readouterr().out)
    return config


@pytest.mark.parametrize(
    "scaling", [["--num-replicas", "3"], ["--min-replicas", "0", "--max-replicas", "4"]]
)
def test_ray_accepts_every_key_of_the_printed_config(
    capsys: pytest.CaptureFixture[str], scaling: list[str]
) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = printed(capsys, *scaling, "--replica-cpus", "2", "--max-batch-size", "8")
    schema = ServeDeploySchema.model_validate(config)
    # Ray ignores keys it does not know: a misspelt one would vanish in this round trip.
    assert schema.model_dump(mode="json", exclude_unset=True) == config


def test_the_printed_config_is_the_commands_application(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["m.pt", "--name", "m", "--host", "0.0.0.0", "--port", "8080", "--max-batch-size", "8"]
    config = printed(capsys, *argv)
    (application,) = config["applications"]
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8080}
    assert application["route_prefix"] == "/"
    assert application["import_path"] == ray_app.BUILDER
    settings = from_cli(*argv)
    assert application["args"] == ray_app.replica_settings(settings)
    (deployment,) = application["deployments"]
    assert deployment == {
        "name": "ptserve",
        "num_replicas": 1,
        **ray_app.deployment_options(settings),
    }
    # Ray calls the builder with the args validated into Settings (its import path resolves).
    module, _, name = application["import_path"].partition(":")
    assert module == ray_app.__name__
    assert getattr(ray_app, name) is ray_app.build


def test_print_config_for_the_bundled_example_names_no_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    (application,) = printed(capsys)["applications"]
    assert application["args"] == {}  # each replica serves its own installed example
    assert Settings.model_validate(application["args"]).model_path == EXAMPLE_MODEL


# ---- the replica's health check -------------------------------------------------------------


@pytest.mark.anyio
async def test_health_is_liveness_and_a_loaded_model() -> None:
    class Broken:
        max_batch_size = 32

        def wait_time(self, *args: object) -> float:
            raise RuntimeError("a bug in the batch policy")

    async with serving_app(EXAMPLE_MODEL) as (app, client):
        runtime = ray_app.runtime(app)
        assert ray_app.health_problem(runtime) is None
        runtime.draining = True  # draining is not a reason to be replaced
        assert ray_app.health_problem(runtime) is None
        runtime.draining = False
        runtime.models.get(None).service.batcher.policy = Broken()
        await client.post("/predict", json={"instances": [[0] * 64]})
        assert ray_app.health_problem(runtime) == "the batch loop stopped; restart this instance"
    assert ray_app.health_problem(runtime) == "the model is not loaded"

import fedloom


def test_public_api_is_exactly_this() -> None:
    assert set(fedloom.__all__) == {
        "ArrayData", "ClientApp", "ClientError", "ClientUpdate", "ConfigError", "DataError",
        "FederatedDataset", "FedloomError", "Fleet", "History", "InProcessFleet", "Instruction",
        "LinearTrainer", "ParamSpec", "Reply", "RoundFailedError", "RoundRecord", "RunResult",
        "SimulationConfig", "SklearnTrainer", "Strategy", "TamperedError", "TorchTrainer",
        "Trainer", "__version__", "fedavg", "from_arrays", "load_checkpoint", "load_dataset",
        "make_strategy", "run_rounds", "simulate",
    }  # fmt: skip
    for name in fedloom.__all__:
        assert hasattr(fedloom, name), name


def test_importing_fedloom_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, fedloom; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_fedloom_does_not_import_the_deployment_or_accounting_libraries() -> None:
    # gRPC, protobuf and X.509 are for fedloom server and client, dp-accounting (and the SciPy
    # it loads, about a second) for runs with DP; a plain simulation never loads them
    import subprocess
    import sys

    heavy = (
        "grpc", "google.protobuf", "cryptography.x509", "dp_accounting", "scipy", "sklearn",
        "cloudpickle", "ray",
    )  # fmt: skip
    code = f"import sys, fedloom; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

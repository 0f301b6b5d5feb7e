"""Many deployed clients in one process, for ``deploy_load.py``: one ``run_client`` loop per
client, each on its own thread and its own TLS channel, with its own certificate.

    .venv/bin/python benchmarks/_load_clients.py PORT CERTS FIRST COUNT POPULATION

Client ``cFIRST`` to ``c(FIRST+COUNT-1)`` train logistic regression on their IID partition of
digits (``POPULATION`` partitions). Prints ``RESULT {json}`` with how many instructions each
answered and the errors, once every loop has returned.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from fedloom.client import ClientApp, ClientContext, LinearTrainer
from fedloom.data import load_dataset
from fedloom.transport._client import ClientOptions, run_client


def main(argv: list[str]) -> None:
    port, certs, first, count, population = argv[0], Path(argv[1]), *map(int, argv[2:5])
    ds = load_dataset("digits", num_clients=population, seed=0)
    ca = (certs / "ca.pem").read_bytes()
    answered: dict[str, int] = {}
    errors: dict[str, str] = {}

    def one(i: int) -> None:
        cid = f"c{i}"
        tls = ((certs / "clients" / f"{cid}.pem").read_bytes(),
               (certs / "clients" / f"{cid}.key").read_bytes(), ca)  # fmt: skip

        def context(model: dict[str, Any]) -> ClientContext:
            return ClientContext(cid, ds.client(i), LinearTrainer(64, 10, lr=0.1))

        try:
            options = ClientOptions(f"127.0.0.1:{port}", tls, client_id=cid, give_up=120)
            answered[cid] = run_client(options, context, ClientApp())
        except Exception as exc:
            errors[cid] = f"{type(exc).__name__}: {exc}"
            print(f"ERROR {cid} {errors[cid]}", flush=True)  # kept if the process is killed

    threads = [threading.Thread(target=one, args=(i,), daemon=True)
               for i in range(first, first + count)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("RESULT", json.dumps({"answered": answered, "errors": errors}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The segments process: the calculation worker, the incremental evaluators (customer
changes, tracked activity), the customer jobs (imports, bulk operations), the write auditor,
the model fitter and the retention sweep, each in a thread, sharing one event-sourced
application."""

from __future__ import annotations

import logging
import signal
import threading

from eventstore.application import Customers
from projections import purchase_models
from service.settings import Settings
from write_api import bulk, imports, jobs
from write_api.background import attribution
from write_api.background.calculation import Calculator, work
from write_api.background.erasure import sweep_forever
from write_api.background.membership import ActivityReevaluator, Reevaluator, follow_customers
from write_api.customers import CustomerCommands

log = logging.getLogger(__name__)


def job_runner(app: Customers) -> jobs.JobRunner:
    """The runner of every kind of customer job."""
    return jobs.JobRunner(app, {"import": imports.run, **dict.fromkeys(bulk.Kind, bulk.run)})


class SegmentEngine:
    """`start()` / `stop()` run it in daemon threads of this process (tests, benches);
    `run_forever(settings)` is the `customers serve segments` process."""

    def __init__(self, settings: Settings, *, app: Customers | None = None) -> None:
        if not settings.database_url:
            raise RuntimeError("DATABASE_URL is not set")
        self._url = settings.database_url
        self._recalculate_every = settings.segment_recalculation_hours * 3600
        self._model_fit_hours = settings.model_fit_hours
        self._own_app = app is None
        self.app = app or Customers(settings, pool_size=2)
        self.calculator = Calculator(self.app)
        self.reevaluator = Reevaluator(self.app)
        self.activity = ActivityReevaluator(Reevaluator(self.app), self._url)
        self.customers = CustomerCommands(self.app)
        self.auditor = attribution.WriteAuditor(self.app)
        self.jobs = [job_runner(self.app) for _ in range(settings.job_workers)]
        self._grace = settings.erasure_grace_hours * 3600
        self._retention_months = settings.activity_retention_months
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=work,
                args=(self.calculator, self._stop, self._recalculate_every),
                name="calculator",
                daemon=True,
            ),
            threading.Thread(
                target=follow_customers,
                args=(self.reevaluator, self._url, self._stop),
                name="reevaluator",
                daemon=True,
            ),
            threading.Thread(
                target=self.activity.follow,
                args=(self._stop,),
                name="activity-reevaluator",
                daemon=True,
            ),
            *(
                threading.Thread(
                    target=jobs.work, args=(runner, self._stop), name="customer-jobs", daemon=True
                )
                for runner in self.jobs
            ),
            threading.Thread(
                target=purchase_models.fit_forever,
                args=(self._url, self._model_fit_hours, self._stop),
                name="model-fitter",
                daemon=True,
            ),
            threading.Thread(
                target=attribution.follow_log,
                args=(self.auditor, self._url, self._stop),
                name="write-auditor",
                daemon=True,
            ),
            threading.Thread(
                target=sweep_forever,
                args=(self.customers, self._grace, self._retention_months, self._stop),
                name="erasure",
                daemon=True,
            ),
        ]
        for t in self._threads:
            t.start()
        log.info("segment engine started")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        self.calculator.close()
        self.reevaluator.close()
        self.activity.close()
        self.auditor.close()
        for runner in self.jobs:
            runner.close()
        if self._own_app:
            self.app.close()
        log.info("segment engine stopped")


def run_forever(settings: Settings) -> None:
    """`customers serve segments`: until SIGTERM/SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine = SegmentEngine(settings)
    engine.start()
    try:
        stop.wait()
    finally:
        engine.stop()

"""The services one server runs, wired together once (no module globals)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from herd.config import Settings
from herd.engine.runner import ProcessRunner
from herd.registry.create import ModelCreator
from herd.registry.default_model import register_default_model
from herd.registry.manage import ModelManager
from herd.registry.models import ModelCatalog
from herd.registry.store import Store
from herd.registry.transfer import Transfers
from herd.scheduler.scheduler import Scheduler
from herd.services.chat import ChatService
from herd.services.model_views import ModelViews
from herd.services.response_store import ResponseStore


@dataclass
class Services:
    settings: Settings
    store: Store
    catalog: ModelCatalog
    scheduler: Scheduler
    chat: ChatService
    models: ModelViews
    manager: ModelManager  # blobs, copy, delete
    creator: ModelCreator  # /api/create
    transfers: Transfers  # /api/pull, /api/push
    responses: ResponseStore  # /v1/responses kept for previous_response_id


def build_services(settings: Settings, runner_factory: object = None) -> Services:
    store = Store(settings.models_dir)
    if settings.register_default_model:
        register_default_model(store)
    catalog = ModelCatalog(store)
    scheduler = Scheduler(
        runner_factory or functools.partial(ProcessRunner, rpc_timeout=settings.rpc_timeout_s),  # type: ignore[arg-type]
        max_loaded=settings.max_loaded_models,
        max_queue=settings.max_queue,
        default_keep_alive=settings.keep_alive_s,
        load_timeout=settings.load_timeout_s,
    )
    return Services(
        settings=settings,
        store=store,
        catalog=catalog,
        scheduler=scheduler,
        chat=ChatService(catalog, scheduler, settings),
        models=ModelViews(catalog, scheduler),
        manager=ModelManager(store),
        creator=ModelCreator(store),
        transfers=Transfers(store),
        responses=ResponseStore(settings.responses_max, settings.responses_ttl_s),
    )

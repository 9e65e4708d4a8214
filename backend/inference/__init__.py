"""Running a tile model over many batches, locally or on a cluster, behind one small seam.

The raster engines (:mod:`backend.jobs.segment`, and :mod:`backend.jobs.skysense` for classify and prototypes)
only talk to a :class:`~.predictor.TilePredictor` for their tiles. The seam, for anyone plugging in another
executor:

``spec.TileModelSpec(job: str, params: dict)``
    Frozen, picklable description of a model: ``job`` in ``{"segment", "classify", "prototypes"}``;
    for ``"segment"`` ``params = {"model": <head folder, str>, "backbone": <str or None>}``; for the
    SkySense jobs see :func:`.skysense_model.skysense_spec` (a folder under ``"model"`` or a configuration
    name under ``"config"``, the seed, and the outputs wanted; batches are dicts of arrays per modality).
``tile_model.load_tile_model(spec, device) -> TileModel``
    Loads it on ``device`` (a ``torch.device`` or a string such as ``"cuda:0"``). A ``TileModel`` is a
    callable ``model(batch) -> outputs`` on numpy, picklable in and out; for ``"segment"``: float32
    ``(N, C, H, W)`` normalised tiles in [-1, 1] -> float32 ``(N, K, H, W)`` class probabilities. It also
    has ``provenance: dict`` (what outputs record about the model) and ``max_batch: int | None`` (a
    batch size known to fit, None when unknown).
``predictor.TilePredictor`` (a runtime-checkable Protocol)
    ``map(batches: Iterable[Any]) -> Iterator[Any]``: one output per input batch, in input order,
    lazily, with a bounded number of batches read ahead / in flight (the input iterator reads rasters,
    so consuming it early would defeat bounded memory). A predictor must cope with the consumer
    stopping early (the generator is closed on cancel) and stop its reading then. ``close()`` frees
    workers; calling it twice is harmless.
``predictor.LocalPredictor(tile_model, prefetch=2)``
    In-process: the input iterator runs in one background thread, ``prefetch`` batches ahead, so reading
    overlaps compute; on a CUDA out-of-memory error the batch is halved and retried, and the smaller size
    is kept for the following batches.
``executor.make_predictor(spec, params, device=None) -> TilePredictor``
    ``LocalPredictor(load_tile_model(spec, device))`` unless ``params.get("cluster")`` is set; then
    ``backend.inference.cluster.RayPredictor(spec, params["cluster"])`` (any further constructor
    arguments must have defaults). A RayPredictor loads the model with ``load_tile_model(spec, device)``
    in its workers and must keep the same ordering and early-stop behaviour as LocalPredictor.
``TilePredictor.provenance: dict``
    What outputs record about the model (the TileModel's ``provenance``; a RayPredictor fetches it
    from one worker). May be empty; the engine records the head's sha256 from its file in any case
    (``tile_model.model_sha256(spec)``).
"""

"""Model and tokenizer loading (local paths, hub names, ``embedded:*``) and the embedded tiny model.

The embedded model lets ``entropo train`` run with no download: a character-level tokenizer
and a small Qwen2 built from a config (:mod:`entropo.models.tiny`), cached on disk by
:func:`entropo.models.loading.resolve_model_path`.
"""

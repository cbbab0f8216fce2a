"""OpenAI-compatible serving: `tuneloop serve RUN_DIR|MODEL [--adapter NAME=RUN_DIR ...]`.

Four layers, each knowing only the one below it:
protocol.py (pydantic schemas) -> handlers.py (logic over the `Engine` protocol) -> routes.py (thin HTTP)
-> app.py (assembly; its lifespan owns the engine). engine.py + batcher.py are the local transformers engine
(continuous batching on a model thread); feedback.py is the opt-in request log and its training-data export.
"""

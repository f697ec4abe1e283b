"""`ocr-gateway`: an HTTP front door for services that cannot speak Kafka.

A producer tool: it publishes requests (and cancels) to the requests topic exactly as
ocr-submit does, and never reads that topic. What it serves comes from a materialised view
of ocr.progress and ocr.results, kept in Redis by its own consumer group.

- settings.py       OCR_GATEWAY_* settings, and which shared OCR_* settings it reads
- access.py         API keys: accepted or not, key ids for counting (keys never logged)
- intake.py         form/JSON fields to ocr-submit's RequestOptions; uploads to disk
- documents.py      uploads checked against the consumer's limits; page images (processes)
- submission.py     the request producer; the cancel control record
- view_model.py     the view's rules (pure): which event wins, when a task is final
- view_store.py     the view and the gateway's records in Redis
- view.py           the view's Kafka consumer: catch-up, readiness, commits after writes
- notify.py         wake-ups for SSE streams and the synchronous endpoint (Redis pub/sub)
- answers.py        response models (the OpenAPI document) built from the view
- page_html.py      a page's Markdown as sanitised HTML for the web page
- routes_tasks.py   /v1/tasks, its events, cancel, and /v1/ocr
- routes_results.py result.md/json/zip (task_files, as ocr-collect), pages and images
- service.py        the parts started and stopped together; health and readiness
- app.py            the ASGI app: errors, body limit, metrics, static page
- cli.py            `ocr-gateway` (uvicorn)
- static/           the web page (no build step)
"""

"""ingot's OpenAI-compatible HTTP server (`ingot serve`): protocol models, routes, metrics."""

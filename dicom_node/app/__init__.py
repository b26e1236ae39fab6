"""The application: the node assembled from its parts, the worker process, the demo."""

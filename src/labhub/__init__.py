"""LabHub: JupyterLab workspaces, training jobs and model services for a research group."""

__version__ = "0.1.0"

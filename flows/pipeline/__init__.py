"""The Prefect shell: the build's parameters, obtaining the sources, the flow that runs the stage list, the
deployment, artifacts and Hub upload."""

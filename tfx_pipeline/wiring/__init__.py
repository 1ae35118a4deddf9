"""Pipeline wiring: which TFX components run, in what order, with which inputs."""

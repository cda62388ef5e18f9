"""The config as the experiment record: validation of every key with messages naming the valid values
(validation, latent_checks), the run's record and what may change on resume (record), one-line flag errors
(cli_errors).
"""

"""pytest plugins of the integration tests, registered in pytest.ini."""

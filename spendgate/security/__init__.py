"""Credentials, the web guards (security headers, CSRF) and the auth throttle."""

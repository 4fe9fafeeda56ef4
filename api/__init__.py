"""The patient-facing HTTPS API (aiohttp): authentication, vitals, problem+json errors."""

"""Gateway errors, each with the HTTP status it maps to (mapped in one place: app.py).

GatewayError
 ├── BadRequest          400  the body is well-formed but asks for what we cannot do
 ├── Unauthorized        401  no or unknown API key
 ├── Forbidden           403  the key lacks the scope
 ├── NotFound            404  unknown model or prediction id
 ├── PayloadTooLarge     413  body over the size limit
 ├── TooManyRequests     429  the key's rate limit (Retry-After set)
 ├── Unavailable         503  Kafka or vLLM cannot take it now (Retry-After set)
 └── UpstreamError       502  vLLM answered with an error we did not expect
"""

from __future__ import annotations

from refinery.common.exceptions import RefineryError


class GatewayError(RefineryError):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(GatewayError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(GatewayError):
    status_code = 403
    error_type = "permission_error"


class NotFound(GatewayError):
    status_code = 404
    error_type = "not_found_error"


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"


class TooManyRequests(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"


class Unavailable(GatewayError):
    status_code = 503
    error_type = "service_unavailable"


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"

//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the request types, served at `/api/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{operator, partner};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CCDS coordinator API",
        description = "Partner and operator API of a CCDS collective manager. Every call under \
            /api/v1 except this document takes `Authorization: Bearer <token>`; a token's scopes \
            say what it may do (`admin`, `operator:read`, `partner:publish`, `partner:tickets`, \
            `partner:sales`, `partner:demand`, `partner:read`), and a partner token acts for one \
            partner only.",
    ),
    paths(
        super::health,
        operator::whoami,
        operator::overview,
        operator::nodes,
        operator::node,
        operator::contents,
        operator::content,
        operator::reports,
        operator::liveness,
        operator::cluster,
        operator::repairs,
        operator::verdicts,
        operator::ledger,
        operator::reconcile,
        operator::payouts,
        operator::payout,
        operator::sales_import,
        operator::tokens,
        operator::create_token,
        operator::revoke_token,
        partner::contents,
        partner::content,
        partner::publish,
        partner::ticket,
        partner::sales,
        partner::demand,
    ),
    components(schemas(
        operator::WhoAmI,
        operator::ErrorBody,
        operator::PayoutRequest,
        operator::TokenRequest,
        partner::TicketRequest,
        partner::DemandRequest,
    )),
    modifiers(&BearerToken),
    tags(
        (name = "public", description = "No token needed"),
        (name = "operator", description = "The collective's state and its money"),
        (name = "partner", description = "Publishing and selling, for one partner's contents"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-token security scheme the paths refer to.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document, as JSON.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "public",
    responses((status = 200, description = "This document", body = serde_json::Value)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_route_is_documented_with_its_security() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/nodes",
            "/api/v1/partners/{partner}/contents",
            "/api/v1/partners/{partner}/tickets",
            "/api/v1/tokens/{id}",
        ] {
            assert!(paths.contains_key(p), "{p} is missing");
        }
        let publish = &paths["/api/v1/partners/{partner}/contents"]["post"];
        assert_eq!(publish["security"][0]["token"][0], "partner:publish");
        assert!(
            publish["requestBody"]["content"]
                .get("application/octet-stream")
                .is_some()
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["token"]["scheme"],
            "bearer"
        );
    }
}

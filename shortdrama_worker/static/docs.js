// Swagger UI over this worker's own OpenAPI document; "Authorize" takes the API key.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
});

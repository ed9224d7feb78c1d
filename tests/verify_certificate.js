// Verify a lethe deletion certificate with a second, independent JOSE library (panva's jose),
// given the issuer's public JWK Set (`lethe keys public --format jwks`).
//
// usage: node verify_certificate.js CERTIFICATE.jws ISSUER.jwks
// (the jose package from LETHE_TEST_JOSE, a path to its directory, or from node's module path)
// Prints the verified payload (JSON) and exits 0, or prints why and exits 1.
const fs = require("fs");
const jose = require(process.env.LETHE_TEST_JOSE || "jose");

(async () => {
  const [cert, jwksPath] = process.argv.slice(2);
  const keys = jose.createLocalJWKSet(JSON.parse(fs.readFileSync(jwksPath, "utf8")));
  try {
    const { payload } = await jose.compactVerify(fs.readFileSync(cert, "utf8").trim(), keys, {
      algorithms: ["EdDSA"],
    });
    console.log(new TextDecoder().decode(payload));
  } catch (e) {
    console.log(`NOT VERIFIED: ${e.code || e.name}: ${e.message}`);
    process.exit(1);
  }
})();

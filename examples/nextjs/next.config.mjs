/** @type {import("next").NextConfig} */
const nextConfig = {
  // pg is a Node library with optional native parts: loaded by Node, not bundled.
  serverExternalPackages: ["pg"],
  poweredByHeader: false,
};

export default nextConfig;

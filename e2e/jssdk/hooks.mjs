// Module hooks that let plain Node 20 load wukongimjssdk 1.0.4, whose lib/*.js files are
// ES modules with extensionless specifiers in a package without "type": "module"
// (JSSDK.md §1). No SDK file is changed.
export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (err) {
    const fromSdk = context.parentURL && context.parentURL.includes('/wukongimjssdk/lib/');
    if (fromSdk && (specifier === '.' || specifier.startsWith('./'))) {
      const fixed = specifier === '.' ? './index.js' : `${specifier}.js`;
      return next(fixed, context);
    }
    throw err;
  }
}

export async function load(url, context, next) {
  if (url.includes('/wukongimjssdk/lib/') && url.endsWith('.js')) {
    const loaded = await next(url, { ...context, format: 'module' });
    return { ...loaded, format: 'module' };
  }
  return next(url, context);
}

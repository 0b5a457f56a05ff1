// Babel plugins applied to every JS/TS plugin source before it runs (spec plugins.md §5.2):
// import/require rewriting against the allowed list, a time guard in every while/for/do loop,
// and a timeout guard around every `await` and `.then`.
// Loaded into the transpiler isolate after babel.min.js; exposes `transformPluginSource`.
(function () {
  "use strict";

  function cannotImport(name) {
    return new Error("Cannot import '" + name + "'! This package is not provided by PostHog in plugins.");
  }

  function hostImport(t, name) {
    return t.memberExpression(t.identifier("__pluginHostImports"), t.stringLiteral(name), true);
  }

  // `missing` collects the allowed imports this server does not provide: the load fails with one
  // line naming the first (thrown here, Babel would prefix the file name).
  // An import whose bindings appear only in type positions (never as values). An import that is
  // not used at all still counts as an import, so it still fails when not allowed.
  function usedOnlyAsType(path) {
    const names = new Set(path.node.specifiers.map((s) => s.local.name));
    if (names.size === 0) return false;
    for (const local of names) {
      const binding = path.scope.getBinding(local);
      if (binding && binding.referencePaths.length > 0) return false;
    }
    let typeUse = false;
    path.parentPath.traverse({
      Identifier(p) {
        if (names.has(p.node.name) && p.findParent((q) => q.node.type.startsWith("TS"))) {
          typeUse = true;
          p.stop();
        }
      },
    });
    return typeUse;
  }

  function replaceImports(allowed, unprovided, missing) {
    return function ({ types: t }) {
      return {
        visitor: {
          ImportDeclaration(path) {
            if (path.node.importKind === "type") {
              path.remove();
              return;
            }
            const name = path.node.source.value;
            if ((!allowed.has(name) || unprovided.has(name)) && usedOnlyAsType(path)) {
              // TypeScript drops such an import, as the original's Babel did before its check
              // (e.g. `import { ManagedUpload } from 'aws-sdk/clients/s3'` naming a type).
              path.remove();
              return;
            }
            if (!allowed.has(name)) throw cannotImport(name);
            if (unprovided.has(name)) missing.push(name);
            const declarators = [];
            for (const spec of path.node.specifiers) {
              if (spec.importKind === "type") continue;
              let init = hostImport(t, name);
              if (t.isImportSpecifier(spec)) {
                const imported = t.isIdentifier(spec.imported) ? spec.imported.name : spec.imported.value;
                init = t.memberExpression(init, t.stringLiteral(imported), true);
              }
              declarators.push(t.variableDeclarator(t.identifier(spec.local.name), init));
            }
            if (declarators.length === 0) path.remove();
            else path.replaceWith(t.variableDeclaration("const", declarators));
          },
          CallExpression(path) {
            const node = path.node;
            if (!t.isIdentifier(node.callee, { name: "require" }) || node.arguments.length !== 1) return;
            if (path.scope.hasBinding("require")) return;
            const arg = node.arguments[0];
            if (!t.isStringLiteral(arg)) return;
            if (!allowed.has(arg.value)) throw cannotImport(arg.value);
            if (unprovided.has(arg.value)) missing.push(arg.value);
            path.replaceWith(hostImport(t, arg.value));
          },
        },
      };
    };
  }

  function loopTimeout(timeoutSeconds) {
    const unit = timeoutSeconds === 1 ? "second" : "seconds";
    return function ({ types: t }) {
      const done = new WeakSet();
      function guard(path) {
        const node = path.node;
        if (done.has(node) || !node.loc) return;
        done.add(node);
        const where = node.loc.start.line + ":" + node.loc.start.column;
        const id = path.scope.generateUidIdentifier("LP");
        const now = () => t.callExpression(t.memberExpression(t.identifier("Date"), t.identifier("now")), []);
        const message = "Script execution timed out after looping for " + timeoutSeconds + " " + unit + " on line " + where;
        const check = t.ifStatement(
          t.binaryExpression(">", t.binaryExpression("-", now(), id), t.numericLiteral(timeoutSeconds * 1000)),
          t.throwStatement(t.newExpression(t.identifier("Error"), [t.stringLiteral(message)])),
        );
        if (!t.isBlockStatement(node.body)) node.body = t.blockStatement([node.body]);
        node.body.body.unshift(check);
        path.insertBefore(t.variableDeclaration("const", [t.variableDeclarator(id, now())]));
      }
      return { visitor: { WhileStatement: guard, ForStatement: guard, DoWhileStatement: guard } };
    };
  }

  // The label names what was awaited (for TimeoutError.caller). It is a string, so it is never
  // evaluated: the original passed the expression itself and so ran `a()` twice in
  // `await a().then(f)` (spec §8 item 28).
  function promiseTimeout(source) {
    return function ({ types: t }) {
      const done = new WeakSet();
      function label(node) {
        const target = t.isCallExpression(node) ? node.callee : node;
        if (target.start == null || target.end == null) return "<expression>";
        return source.slice(target.start, target.end);
      }
      return {
        visitor: {
          AwaitExpression(path) {
            const node = path.node;
            if (done.has(node)) return;
            done.add(node);
            node.argument = t.callExpression(t.identifier("__asyncGuard"), [node.argument, t.stringLiteral(label(node.argument))]);
          },
          MemberExpression(path) {
            const node = path.node;
            if (done.has(node) || node.computed || !t.isIdentifier(node.property, { name: "then" })) return;
            done.add(node);
            node.object = t.callExpression(t.identifier("__asyncGuard"), [node.object]);
          },
        },
      };
    };
  }

  // Returns {code} or {error: {name, message}}.
  globalThis.transformPluginSource = function (source, allowedImports, unprovidedImports, timeoutSeconds) {
    const allowed = new Set(allowedImports);
    const unprovided = new Set(unprovidedImports);
    const missing = [];
    try {
      const result = Babel.transform(source, {
        filename: "index.ts",
        babelrc: false,
        configFile: false,
        sourceType: "module",
        presets: [["typescript", { onlyRemoveTypeImports: true }]],
        plugins: [
          replaceImports(allowed, unprovided, missing),
          loopTimeout(timeoutSeconds),
          promiseTimeout(source),
          ["transform-modules-commonjs", { strictMode: true }],
        ],
      });
      if (missing.length > 0) {
        return JSON.stringify({ error: { name: "Error", message: "Plugin imports '" + missing[0] + "', which this server does not provide" } });
      }
      return JSON.stringify({ code: result.code });
    } catch (e) {
      return JSON.stringify({ error: { name: (e && e.name) || "Error", message: String((e && e.message) || e) } });
    }
  };
})();

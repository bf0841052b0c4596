/**
 * Parse-only check of Groovy scripts, without QuPath on the classpath.
 *
 * Usage: groovy qupath_scripts/tools/parse_check.groovy FILE.groovy [...]
 * Compiles each file only up to Phases.CONVERSION: the source is lexed, parsed and turned
 * into an AST, but no class is resolved, so `import qupath...` and QuPath's implicit
 * `QP`/`QPEx` methods need not exist. Syntax errors fail; exit code 1 if any file fails.
 */
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.Phases
import org.codehaus.groovy.control.CompilationFailedException

if (args.length == 0) {
    System.err.println('usage: groovy parse_check.groovy FILE.groovy [...]')
    System.exit(2)
}
int failed = 0
for (String name : args) {
    def file = new File(name)
    if (!file.isFile()) {
        System.err.println("MISSING ${name}")
        failed++
        continue
    }
    def unit = new CompilationUnit(new CompilerConfiguration())
    unit.addSource(file)
    try {
        unit.compile(Phases.CONVERSION)
        println "OK ${name}"
    } catch (CompilationFailedException e) {
        System.err.println("FAIL ${name}\n${e.getMessage()}")
        failed++
    }
}
System.exit(failed == 0 ? 0 : 1)

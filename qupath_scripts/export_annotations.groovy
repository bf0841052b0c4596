/**
 * her2 / QuPath 0.6: export the annotations of every image of a project to GeoJSON.
 *
 * GUI:          open the project, Automate > Script editor, open this file,
 *               Run > Run for project (select all images).
 * Command line: QuPath script -p PROJECT/project.qpproj export_annotations.groovy [--args OUT_DIR]
 *               (no --save needed: nothing in the project changes)
 * Writes        OUT_DIR/<entryID>.geojson  (default OUT_DIR = PROJECT/her2/exported), a QuPath
 *               FeatureCollection in level-0 (x, y) pixels, with classes and measurements;
 *               then `her2 qupath export --project PROJECT --out DIR` names them per image.
 * Status        PROJECT/her2/status/export/<entryID>.json ({"ok": ...}); QuPath's multi-image
 *               run exits 0 even when an image fails, so check with
 *               `her2 qupath check --project PROJECT --step export` (qupath_scripts/run_batch.sh does).
 */
import groovy.json.JsonOutput

def entry = getProjectEntry()
def eid = entry.getID()
def statusDir = new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'status', 'export'))
statusDir.mkdirs()
def writeStatus = { boolean ok, String message, int n, String output ->
    new File(statusDir, eid + '.json').text = JsonOutput.toJson([ok: ok, entryID: eid,
        image: entry.getImageName(), objects: n, output: output, message: message]) + '\n'
}

try {
    def outDir = args.size() > 0 ? new File(args[0]) : new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'exported'))
    outDir.mkdirs()
    def out = new File(outDir, eid + '.geojson')
    def tmp = new File(outDir, '.' + eid + '.geojson.part')
    def annotations = getAnnotationObjects()
    exportObjectsToGeoJson(annotations, tmp.getAbsolutePath(), 'FEATURE_COLLECTION')
    if (!tmp.isFile() || tmp.length() == 0)
        throw new IOException('GeoJSON export wrote nothing: ' + tmp)
    if (out.exists())
        out.delete()
    if (!tmp.renameTo(out))
        throw new IOException('cannot move ' + tmp + ' to ' + out)
    writeStatus(true, 'exported', annotations.size(), out.getAbsolutePath())
    println "her2: ${annotations.size()} annotations of ${entry.getImageName()} -> ${out}"
} catch (Throwable t) {
    writeStatus(false, String.valueOf(t), 0, null)
    throw t
}

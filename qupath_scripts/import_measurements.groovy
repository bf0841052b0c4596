/**
 * her2 / QuPath 0.6: put her2 measurements (DAB metrics, HER2-score proxy, …) back onto the
 * annotations they were measured on.
 *
 * GUI:          Automate > Script editor, open this file, Run > Run for project; File > Save.
 * Command line: QuPath script -p PROJECT/project.qpproj -s import_measurements.groovy [--args DIR]
 * Reads         DIR/<entryID>.geojson (default DIR = PROJECT/her2/measurements, written by
 *               `her2 qupath import --project PROJECT --image IMG --geojson RESULTS.geojson`).
 *               Each feature is matched to an existing annotation by object id, then by name,
 *               then by an identical outline; matched annotations get the measurements (and the
 *               class, when they had none); unmatched features are added as new annotations.
 * Status        PROJECT/her2/status/measurements/<entryID>.json; check a batch with
 *               `her2 qupath check --project PROJECT --step measurements`.
 */
import groovy.json.JsonOutput
import qupath.lib.io.PathIO

def entry = getProjectEntry()
def eid = entry.getID()
def statusDir = new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'status', 'measurements'))
statusDir.mkdirs()
def writeStatus = { boolean ok, String message, int matched, int added ->
    new File(statusDir, eid + '.json').text = JsonOutput.toJson([ok: ok, entryID: eid,
        image: entry.getImageName(), matched: matched, added: added, message: message]) + '\n'
}

try {
    def dir = args.size() > 0 ? new File(args[0]) : new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'measurements'))
    def f = new File(dir, eid + '.geojson')
    if (!f.isFile()) {
        writeStatus(true, 'no measurements for this image', 0, 0)
        return
    }
    def incoming = PathIO.readObjects(f)
    def annotations = getAnnotationObjects()
    def byId = [:]
    def byName = [:]
    for (a in annotations) {
        byId[a.getID().toString()] = a
        if (a.getName())
            byName[a.getName()] = a
    }
    int matched = 0
    def toAdd = []
    for (o in incoming) {
        def target = byId[o.getID().toString()]
        if (target == null && o.getName())
            target = byName[o.getName()]
        if (target == null)
            target = annotations.find { a -> a.getROI()?.getGeometry()?.equalsExact(o.getROI()?.getGeometry(), 1e-6) }
        if (target == null) {
            toAdd << o
            continue
        }
        def ml = target.getMeasurementList()
        for (String key : o.getMeasurementList().getNames())
            ml.put(key, o.getMeasurementList().get(key))
        ml.close()
        if (target.getPathClass() == null && o.getPathClass() != null)
            target.setPathClass(o.getPathClass())
        matched++
    }
    if (!toAdd.isEmpty())
        addObjects(toAdd)
    fireHierarchyUpdate()
    writeStatus(true, 'from ' + f.getName(), matched, toAdd.size())
    println "her2: ${matched} annotations updated, ${toAdd.size()} added in ${entry.getImageName()}"
} catch (Throwable t) {
    writeStatus(false, String.valueOf(t), 0, 0)
    throw t
}
